"""`assemble bench SPEC`: tokens/s per GPU, MFU, peak memory and per-op GPU time of training steps."""

from __future__ import annotations

import click

from assembler.bench.workload import LAYOUTS, SYNTHETIC_LAYOUTS
from assembler.cli.paths import UsablePath
from assembler.train.metrics import WARMUP_STEPS


@click.command("bench")
@click.argument("spec_path", metavar="SPEC", type=UsablePath(dir_okay=False, path_type=str))
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Dotted spec override, value parsed as YAML (e.g. -o ops.backend=fast).")
@click.option("--seq", "seq_lens", multiple=True, type=click.IntRange(min=1), default=(4096, 8192), show_default=True,
              help="Tokens per step (one row); repeat for several rows.")
@click.option("--layout", "layouts", multiple=True, type=click.Choice(LAYOUTS), default=SYNTHETIC_LAYOUTS, show_default=True,
              help="Row layout: `packed` synthetic documents of realistic lengths, as assemble train packs data; "
                   "`one-document` per row; `data`: the spec's own data rows at its train.tokens_per_step, as "
                   "assemble train draws them (to compare with a run). Repeat for several.")
@click.option("--steps", default=5, type=click.IntRange(min=1), show_default=True, help="Timed steps per row.")
@click.option("--warmup", default=WARMUP_STEPS, type=click.IntRange(min=0), show_default=True, help="Untimed steps first (compile, autotuning, optimizer state).")
@click.option("--images", default=None, metavar="COUNTxHxW",
              help="Put COUNT images of H x W pixels in every step (a VLM row, e.g. 4x448x448); default: text only.")
@click.option("--profile/--no-profile", default=True, show_default=True, help="Profile one more step for the per-op breakdown.")
@click.option("--memory-peak", is_flag=True,
              help="Run one more step recording every allocation: what is alive at the memory peak, by source line.")
@click.option("--label", default=None, help="Name of these rows in the table.")
@click.option("--memory-cap-gib", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Cap this process's GPU memory (e.g. 79 to check a run fits an 80 GB H100 on a bigger card).")
@click.option("--json", "json_path", default=None, type=UsablePath(dir_okay=False), help="Also write the rows as JSON.")
def bench_command(spec_path: str, overrides: tuple[str, ...], seq_lens: tuple[int, ...], layouts: tuple[str, ...], steps: int, warmup: int,
                  images: str | None, profile: bool, memory_peak: bool, label: str | None, memory_cap_gib: float | None,
                  json_path: str | None) -> None:
    """Time `assemble train`'s training step for SPEC on this GPU (random init, synthetic rows)."""
    import logging

    import torch

    from assembler import load_spec
    from assembler.parallel import distributed
    from assembler.model.build import check_ops_can_train
    from assembler.parallel.float8 import check_precision_can_run
    from assembler.bench.report import format_breakdown, format_memory_peak, format_rows, save
    from assembler.bench.run import bench_spec
    from assembler.bench.workload import ImageSpec
    from assembler.spec.errors import UserError

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("assembler", "blocks"):
        logging.getLogger(name).setLevel(logging.INFO)
    spec = load_spec(spec_path, overrides=list(overrides))
    try:
        image_spec = ImageSpec.parse(images) if images else None
    except ValueError as error:
        raise UserError(str(error)) from None
    if "data" in layouts and not spec.settings.data.sources:
        raise UserError(f"--layout data: {spec_path} has no data.sources; name them in the spec or with "
                        "-o 'data.sources=[{path: FILE.jsonl}]', or use the synthetic layouts")
    if not torch.cuda.is_available():
        raise UserError("assemble bench measures GPU training steps and this machine has no CUDA device: run it on a GPU machine")
    check_ops_can_train(spec, "cuda")
    check_precision_can_run(spec, "cuda")
    try:
        results = bench_spec(spec, list(seq_lens), layouts=layouts, steps=steps, warmup=warmup, images=image_spec,
                             profile=profile, memory_peak=memory_peak, label=label, memory_cap_gib=memory_cap_gib,
                             on_result=(lambda rows: save(rows, json_path)) if json_path else None)
    finally:
        distributed.teardown()  # the world of one the training step runs in
    click.echo(f"device: {torch.cuda.get_device_name()}")
    click.echo(format_rows(results))
    for result in results:
        if result.breakdown:
            click.echo(format_breakdown(result))
        if result.memory_peak:
            click.echo(format_memory_peak(result))


if __name__ == "__main__":
    bench_command()
