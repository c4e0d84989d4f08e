"""`assemble train SPEC`: train the model a spec describes (attached to the `assemble` group in cli.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from assembler.cli.paths import UsablePath
from assembler.spec.errors import USER_ERROR_EXIT_CODE


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: printed as a message, exit code 2, no traceback."""
    from assembler.data.records import DataError
    from assembler.hf.checkpoint.errors import CheckpointError
    from assembler.spec.errors import UserError  # spec, resume, run-folder and NaN-loss errors

    return (UserError, DataError, CheckpointError)


@click.command("train")
@click.argument("spec", type=UsablePath(dir_okay=False, path_type=Path))
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec field, e.g. -o train.steps=10 (value parsed as YAML).")
@click.option("--resume", type=UsablePath(path_type=Path), default=None, help="Resume from this checkpoint (or run folder's latest). Default: the run folder's latest, if any.")
@click.option("--output-dir", type=UsablePath(file_okay=False, path_type=Path), default=None, help="Run folder (default: train.output_dir, else runs/<spec name>).")
def train_command(spec: Path, overrides: tuple[str, ...], resume: Path | None, output_dir: Path | None) -> None:
    """Train the model SPEC describes: checkpoints, metrics and an HF export go to the run folder."""
    from assembler import load_spec
    from assembler.parallel import distributed
    from assembler.train.loop import train

    errors = user_error_types()
    start = time.monotonic()
    try:
        loaded = load_spec(spec, list(overrides))
        result = train(loaded, output_dir=output_dir, resume=resume)
        distributed.barrier()  # every rank done before any leaves (see barrier)
    except errors as error:
        # An error every rank hits alike (the spec, read before the process group exists, or a
        # verdict the ranks agreed on) is printed once, by rank 0; one a rank hit alone (its own
        # rows' data, say) by that rank, naming it. `except` runs before `finally`, so the process
        # group is still there to ask; before it exists, torchrun's RANK answers.
        rank = distributed.launch_rank()
        alike = distributed.is_shared_by_every_rank(error) or not distributed.is_distributed_run()
        if not alike or rank == 0:
            prefix = "error: " if alike else f"error (rank {rank}): "
            for line in str(error).splitlines() or [type(error).__name__]:
                click.echo(f"{prefix}{line}", err=True)
        sys.exit(USER_ERROR_EXIT_CODE)
    finally:
        is_main = distributed.launch_rank() == 0  # before teardown: afterwards every rank reads as 0
        distributed.teardown()
    if is_main:
        final = f", final loss {result.losses[max(result.losses)]:.4f}" if result.losses else ""
        click.echo(f"done in {time.monotonic() - start:.0f} s{final}: {result.run_dir}")
    if distributed.launched_by_torchrun():
        distributed.leave_process(0)  # see leave_process: torch's exit-time teardown can abort a finished rank
