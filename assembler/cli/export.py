"""`assemble export CHECKPOINT_OR_RUN_DIR OUT_DIR [--adapter | --merge]`: the command's arguments and messages; what it
exports and how is `assembler.hf.export`'s."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from assembler.cli.paths import UsablePath
from assembler.hf.export import EXPORT_DTYPES
from assembler.spec.errors import USER_ERROR_EXIT_CODE
from blocks.constants import DTYPES


@click.command("export")
@click.argument("checkpoint_or_run_dir", type=UsablePath(path_type=Path))
@click.argument("out_dir", type=UsablePath(path_type=Path))
@click.option("--shard-size", default="5GB", show_default=True, help="Largest shard file, e.g. 500MB, 5GB, 2GiB.")
@click.option("--dtype", type=click.Choice(EXPORT_DTYPES), default=None,
              help="Dtype of every tensor but those the model family keeps in float32 (Qwen3.5: A_log and "
              "linear_attn.norm.weight). Default: the dtype the model computes in, parallel.fsdp.param_dtype "
              "(what the run's own hf/ export holds; bfloat16 for an HF folder).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it holds an earlier export (one with the "
              ".assemble-export marker); any other folder, the source, or a folder containing it is refused.")
@click.option("--adapter", is_flag=True, help="A LoRA run (train.adapters): write only its adapters, as a PEFT folder "
              "(adapter_config.json + adapter_model.safetensors, in the adapters' dtype) that "
              "peft.PeftModel.from_pretrained loads onto the base model.")
@click.option("--merge", is_flag=True, help="A LoRA run: write the full model with the adapters merged into the "
              "base weights (what a LoRA run exports without either flag).")
def export_command(checkpoint_or_run_dir: Path, out_dir: Path, shard_size: str, dtype: str | None, overwrite: bool,
                   adapter: bool, merge: bool) -> None:
    """Export CHECKPOINT_OR_RUN_DIR (HF folder, training checkpoint or run folder) as an HF folder at OUT_DIR."""
    from assembler.hf.export import export
    from assembler.spec.errors import UserError

    try:
        written = export(checkpoint_or_run_dir, out_dir, shard_size=shard_size, dtype=DTYPES[dtype] if dtype else None, overwrite=overwrite,
                         adapter=adapter, merge=merge)
    except UserError as error:  # CheckpointError, SpecError: a message, exit 2, no traceback
        for line in str(error).splitlines():
            click.echo(f"error: {line}", err=True)
        sys.exit(USER_ERROR_EXIT_CODE)
    click.echo(f"exported: {written}")
