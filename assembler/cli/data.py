"""`assemble data SPEC`: the spec's data as training would see it (counts, lengths, packing, bad records), no model."""

from __future__ import annotations

import json

import click

from assembler.cli.paths import UsablePath
from assembler.spec.errors import USER_ERROR_EXIT_CODE


@click.command("data")
@click.argument("spec_path", metavar="SPEC", type=UsablePath(dir_okay=False, path_type=str))
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE", help="Dotted spec override, value parsed as YAML.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object instead.")
def data_command(spec_path: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Read, tokenize and pack SPEC's data sources; print records per source, the token-length
    histogram, images per sample, packing efficiency, and every bad or overlong record with its
    file and line (all of them: bad records are skipped here, whatever data.on_error says).
    Exits 2 when `assemble train` would stop on this data (bad records under data.on_error: raise,
    no samples), 0 otherwise."""
    from assembler import load_spec
    from assembler.data.report import data_report

    report = data_report(load_spec(spec_path, overrides=list(overrides)), progress=lambda line: click.echo(line, err=True))
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.describe())
    stops = report.training_stops()
    if stops is not None:
        click.echo(f"error: {stops}", err=True)
        raise click.exceptions.Exit(USER_ERROR_EXIT_CODE)
