"""Benchmark `assemble train`'s own training step from a spec, on synthetic rows shaped like real data.

The model, its parallelization and optimizer come from the training loop's functions
(`build_for_world` → FSDP2 over this GPU's world of one, fp32 master parameters, compute in
`parallel.fsdp.param_dtype`; `build_optimizer` and `build_lr_schedule` from `train:`) and every
timed step is `training_step`, the function `assemble train` calls: a benchmark number is a
number of the user's command. The rows come from `workload.synthetic_row` through the data
pipeline's collator: packed documents (the varlen attention and delta-rule path that real data
takes), or one document per row (labelled as such), optionally with images.
"""

from __future__ import annotations

import itertools
import logging
from typing import Callable, Iterator

import torch

from assembler.model.family import family_of_model
from assembler.bench.measure import Measurement, measure_training_step
from assembler.bench.memory_peak import mark
from assembler.bench.workload import ImageSpec, synthetic_row, text_matmul_flops, training_flops
from assembler.model.build import decide_auto_ops
from assembler.parallel.distributed import init_world
from assembler.spec import Spec
from assembler.train.loop import build_for_world, seed_everything
from assembler.train.metrics import WARMUP_STEPS, matmul_weight_flops_per_token
from assembler.train.optim import build_lr_schedule, build_optimizer
from assembler.train.step import training_step

log = logging.getLogger(__name__)

# Dynamo keeps one compiled graph per layer type and shape regime; the default limit (8) would
# silently fall back to eager once a few sequence lengths and both layer types have been seen.
RECOMPILE_LIMIT = 64
# The schedule's horizon: long enough that no benchmark step reaches the end of its decay.
SCHEDULE_STEPS = 10_000


def bench_spec(
    spec: Spec,
    seq_lens: list[int],
    *,
    layouts: tuple[str, ...] = ("packed",),
    steps: int = 5,
    warmup: int = WARMUP_STEPS,
    images: ImageSpec | None = None,
    profile: bool = True,
    memory_peak: bool = False,
    label: str | None = None,
    memory_cap_gib: float | None = None,
    on_result: "Callable[[list[Measurement]], None] | None" = None,
) -> list[Measurement]:
    """Measurements of `training_step` for each sequence length × layout, on this GPU.

    Layout `data` adds one row set: the spec's own data at its `train.tokens_per_step`, drawn
    in the order `assemble train` draws it (each step the next row). `on_result` gets the rows so
    far after each one (so a run cut short still leaves its rows).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("assemble bench needs a CUDA GPU")
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, RECOMPILE_LIMIT)
    if memory_cap_gib is not None:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_cap_gib * 2**30 / total))
    world = init_world()
    spec, ops_choice = decide_auto_ops(spec, world.device.type, sharded=world.is_distributed)
    if ops_choice:
        log.info("%s", ops_choice)
    train = spec.settings.train
    seed_everything(train.seed)
    if spec.settings.parallel.activation_checkpointing.mode == "auto":  # planned for the largest row
        from assembler.parallel.activation_checkpoint_probe import resolve_auto_checkpointing

        largest, _ = synthetic_row(spec.model, max(seq_lens or [train.tokens_per_step]), layout="packed", images=images)
        spec, plan_line = resolve_auto_checkpointing(spec, largest, world.device, world_size=world.world_size)
        log.info("%s", plan_line)
    model = build_for_world(spec, world)
    model.train()
    optimizer = build_optimizer(model, train.optimizer)
    scheduler = build_lr_schedule(optimizer, train.schedule, SCHEDULE_STEPS)
    grad_clip = float(train.grad_clip)
    text_flops = text_matmul_flops(model)
    text_spec = spec.settings.model.text
    label = label or f"{spec.name} ({spec.settings.ops.backend}, AC {spec.settings.parallel.activation_checkpointing.mode})"

    results = []
    for seq_len, layout in [(n, name) for n in seq_lens for name in layouts if name != "data"] + (
        [(train.tokens_per_step, "data")] if "data" in layouts else []
    ):
        if layout == "data":
            # The run's own rows, in the run's order: `assemble train`'s batch shape exactly.
            from assembler.data import build_loader

            # Drawn up front, so the timed steps hold the training step alone, as train's steady
            # state does (it times the data pipeline apart).
            loader = build_loader(spec, rank=world.rank, world_size=world.world_size)
            drawn = [next(loader) for _ in range(warmup + steps + int(profile) + int(memory_peak))]
            row, rows = drawn[0], iter(drawn)  # each step the next row
            patches = 0 if row.get("pixel_values") is None else row["pixel_values"].shape[0]
            images_per_row = len(row["image_grid_thw"]) if patches else 0
        else:
            row, patches = synthetic_row(spec.model, seq_len, layout=layout, images=images)
            rows, images_per_row = itertools.repeat(row), images.count if images else 0  # the same row every step
        vision = None
        if patches:
            vision_tower = family_of_model(model).towers(model)["vision"]
            vision = (matmul_weight_flops_per_token(vision_tower), spec.settings.model.vision, patches, patches // images_per_row)
        flops = training_flops(text_flops, text_spec, seq_len, vision=vision)  # of the first row, for `data`
        documents = row["packing"].num_documents
        row_label = {"packed": f"{label}, packed {documents} docs", "one-document": f"{label}, one document",
                     "data": f"{label}, the spec's data"}[layout]
        if images and layout != "data":
            row_label += f" + {images.count}x{images.height}x{images.width}"

        def step(rows: Iterator[dict] = rows) -> None:
            training_step(model, optimizer, scheduler, [next(rows)], world=world, grad_clip=grad_clip, on_phase=mark)

        log.info("%s @ %d tokens: %d warm-up steps (compile and autotuning take minutes on a fresh machine), "
                 "%d timed%s%s", row_label, seq_len, warmup, steps, ", 1 profiled" if profile else "",
                 ", 1 recording the memory peak" if memory_peak else "")
        result = measure_training_step(
            step, label=row_label, tokens_per_step=seq_len, flops_per_step=flops, steps=steps, warmup=warmup,
            profile=profile, memory_peak=memory_peak, cleanup=lambda: optimizer.zero_grad(set_to_none=True),
        )
        log.info("%s @ %d: %s", row_label, seq_len, result.error or f"{result.tokens_per_s:,.0f} tokens/s")
        results.append(result)
        if on_result is not None:
            on_result(results)
    return results
