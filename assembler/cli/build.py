"""`assemble build SPEC --summary`: assemble the model on the meta device and describe it."""

from __future__ import annotations

import click

from assembler.cli.paths import UsablePath


@click.command("build")
@click.argument("spec_path", metavar="SPEC", type=UsablePath(dir_okay=False, path_type=str))
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE", help="Dotted spec override, value parsed as YAML.")
@click.option("--summary/--no-summary", default=True, show_default=True, help="Print the per-block table and totals.")
def build_command(spec_path: str, overrides: tuple[str, ...], summary: bool) -> None:
    """Build the model SPEC describes without allocating it (meta device)."""
    from assembler import build_model, load_spec
    from assembler.model.summary import format_summary

    spec = load_spec(spec_path, overrides=list(overrides))
    model = build_model(spec, device="meta")
    if summary:
        click.echo(format_summary(model, spec.name))
    else:
        click.echo(f"{spec.name}: built ({sum(p.numel() for p in model.parameters()):,} parameters)")
