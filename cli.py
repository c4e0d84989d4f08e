"""`assemble`: the command line.

Spec commands (validate, schema, import-hf) live here; bigger commands live in their own small
modules and are listed in COMMAND_MODULES, imported only when run (so `assemble validate` never
pays for what `assemble train` needs). Every command runs inside `fail_cleanly`: a user error
(bad spec, missing file) prints a message and exits with code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click

from assembler.cli.paths import UsablePath
from assembler.spec.errors import USER_ERROR_EXIT_CODE, SpecError, UserError

USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)

# Command name -> "module:attribute" of its click command.
COMMAND_MODULES = {
    "build": "assembler.cli.build:build_command",
    "train": "assembler.cli.train:train_command",
    "export": "assembler.cli.export:export_command",
    "bench": "assembler.cli.bench:bench_command",
    "data": "assembler.cli.data:data_command",
    "chat": "assembler.cli.chat:chat_command",
}


@contextmanager
def fail_cleanly() -> Iterator[None]:
    """Turn a user error into `error: ...` lines on stderr and exit code 2."""
    try:
        yield
    except USER_ERRORS as error:
        print_error(error)
        raise click.exceptions.Exit(USER_ERROR_EXIT_CODE) from None


def print_error(error: BaseException) -> None:
    for line in str(error).splitlines() or [type(error).__name__]:
        click.echo(f"error: {line}", err=True)


class AssembleGroup(click.Group):
    """A click group that loads COMMAND_MODULES lazily and runs every command inside `fail_cleanly`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {name for name in COMMAND_MODULES if _module_exists(name)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMAND_MODULES and name not in self.commands and _module_exists(name):
            module_name, attribute = COMMAND_MODULES[name].split(":")
            self.add_command(getattr(importlib.import_module(module_name), attribute), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):  # noqa: ANN201 (click's signature)
        with fail_cleanly():
            return super().invoke(ctx)


def _module_exists(command: str) -> bool:
    # Lets the CLI run while a command's module is still being written (no import, just a lookup).
    return importlib.util.find_spec(COMMAND_MODULES[command].split(":")[0]) is not None


def package_version() -> str:
    """This checkout's version (pyproject.toml beside this file), else the installed package's."""
    pyproject = Path(__file__).with_name("pyproject.toml")
    if pyproject.is_file():
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.MULTILINE)
        if found:
            return found.group(1)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("assemble")
    except PackageNotFoundError:
        return "unknown"


@click.group(cls=AssembleGroup)
@click.version_option(package_version(), "--version", prog_name="assemble", message="%(prog)s %(version)s")
def assemble() -> None:
    """Assemble, train and export models described by YAML specs."""


@assemble.command()
@click.argument("specs", metavar="SPEC...", nargs=-1, required=True, type=UsablePath(path_type=Path))
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Dotted spec override applied to every SPEC, value parsed as YAML (e.g. -o train.steps=10).")
@click.option("--resolved", is_flag=True, help="Also print each valid spec resolved (defaults filled in).")
@click.option("--verbose", is_flag=True, help="Also say where the spec's family and every block it names come from (module, package).")
def validate(specs: tuple[Path, ...], overrides: tuple[str, ...], resolved: bool, verbose: bool) -> None:
    """Check SPEC files against the schema and the block registry: one OK line per valid spec, and a
    warning when a valid spec cannot train as it stands (no data sources, say)."""
    from assembler.spec.loading import load_spec
    from assembler.train.startup_checks import spec_warnings
    from assembler.train.trained_parameters import check_trained_parameters

    failed = 0
    for path in specs:
        try:
            spec = load_spec(path, list(overrides))
            check_trained_parameters(spec)  # freeze / adapter globs against the model's names
        except SpecError as error:
            print_error(error.with_file(str(path)))
            failed += 1
            continue
        model = spec.settings.model
        counts = ", ".join(f"{model.text.layers.count(name)} {name}" for name in model.text.layer_types)
        seen = f"vision depth {model.vision['depth']}" if model.vision else "no vision tower"
        click.echo(f"OK {path}: {spec.name} ({model.family}) — {model.text.num_hidden_layers} text layers ({counts}), "
                   f"{seen}, ops {spec.settings.ops.backend}")
        for warning in spec_warnings(spec):  # valid, but `assemble train` would stop or waste the run
            click.echo(f"warning: {path}: {warning}", err=True)
        if verbose:
            for line in origin_lines(spec):
                click.echo(f"  {line}")
        if resolved:
            click.echo(spec.to_yaml())
    if failed:
        raise click.exceptions.Exit(USER_ERROR_EXIT_CODE)


def origin_lines(spec) -> list[str]:  # noqa: ANN001 (Spec)
    """`family NAME: module (package)` and `PATH: kind block NAME: module (package)` for every block the spec names."""
    from assembler.model.family import family_of
    from assembler.spec.errors import format_path
    from assembler.spec.validation import block_fields
    from blocks.registry import get_block, origin

    family = family_of(spec)
    lines = [f"family {family.name}: {origin(family)}"]
    data = {"model": spec.model}
    for path, kind in block_fields(data).items():
        name = data
        for key in path:
            name = name[key]
        lines.append(f"{format_path(path)}: {kind} block {name}: {origin(get_block(kind, name))}")
    return lines


@assemble.command()
@click.option("--write", is_flag=True, help="Regenerate the checked-in assembler/schema/spec.schema.json.")
@click.option("--check", is_flag=True, help="Exit 1 (with a diff) when the checked-in schema is stale.")
def schema(write: bool, check: bool) -> None:
    """Print the spec's JSON Schema (draft 2020-12), assembled from its hand-written base and the
    registered blocks' settings; or write / check the checked-in copy editors and CI read."""
    from assembler.spec import schema as spec_schema

    if write and check:
        raise click.UsageError("pass --write or --check, not both")
    if write:
        path = spec_schema.SCHEMA_PATH
        click.echo(f"wrote {path}" if spec_schema.write_schema() else f"{path} is up to date")
    elif check:
        path, diff = spec_schema.SCHEMA_PATH, spec_schema.stale_schema_diff()
        if diff is not None:
            click.echo(diff, err=True, nl=False)
            click.echo(f"error: {path} is stale (the block registry or its base changed): "
                       f"run `{spec_schema.REGENERATE_COMMAND}`", err=True)
            raise click.exceptions.Exit(1)
        click.echo(f"{path} is up to date")
    else:
        click.echo(spec_schema.schema_text(spec_schema.cached_schema()), nl=False)


@assemble.command("import-hf")
@click.argument("config", metavar="MODEL_DIR_OR_CONFIG_JSON", type=UsablePath(path_type=Path))
@click.option("-o", "--output", required=True, type=UsablePath(dir_okay=False, path_type=Path), help="Spec file to write.")
@click.option("--name", default=None, help="Spec name, and so the run folder runs/NAME (default: the model's name).")
@click.option("--data", "data", multiple=True, type=UsablePath(path_type=Path),
              help="A data source (JSONL, Parquet, Arrow, or a folder of them) to list under data.sources; repeatable.")
@click.option("--lora", is_flag=True, help="Train LoRA adapters (rank 16 on every linear layer) on the frozen model instead of every weight.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="train.steps (default: the family's fine-tuning default, 1000).")
@click.option("--tokens-per-step", type=click.IntRange(min=1), default=None,
              help="train.tokens_per_step, the packed row's length (default: the family's, 4096).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def import_hf(config: Path, output: Path, name: str | None, data: tuple[Path, ...], lora: bool, steps: int | None,
              tokens_per_step: int | None, force: bool) -> None:
    """Write a spec that fine-tunes the HF model in MODEL_DIR (a family's model type: qwen3_5,
    qwen3): its model, train.init_from set to the folder, the family's fine-tuning settings.
    Given only a config.json, the spec trains from random init. Fields a spec cannot represent
    are refused by name."""
    from assembler.hf.fine_tuning_spec import fine_tuning_spec
    from assembler.spec.spec import dump_yaml
    from assembler.spec.loading import load_spec
    from assembler.spec.schema import SCHEMA_PATH

    if output.exists() and not force:
        raise UserError(f"{output}: already exists — pass --force to overwrite it")
    imported = fine_tuning_spec(config, output, name=name, data=data, lora=lora, steps=steps, tokens_per_step=tokens_per_step)
    schema_link = Path(os.path.relpath(SCHEMA_PATH, output.absolute().parent)).as_posix()
    header = [f"# yaml-language-server: $schema={schema_link}",
              f"# Imported from {config} by `assemble import-hf`: paths are relative to this file.",
              *(f"# {note}" for note in imported.notes)]
    output.write_text("\n".join(header) + "\n" + dump_yaml(imported.spec), encoding="utf-8")
    spec = load_spec(output)  # what we wrote must load back: fail here, not in the user's next command
    click.echo(f"wrote {output} ({spec.name}{', LoRA' if lora else ''}"
               + (f", from {spec.settings.train.init_from}" if spec.settings.train.init_from else ", random init") + ")")
    for note in imported.notes:
        click.echo(f"note: {note}")


if __name__ == "__main__":
    assemble()
