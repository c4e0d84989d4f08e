"""The training loop of `assemble train`: build → (parallelize) → optimizer → steps → checkpoints →
HF export.

One optimizer step = `train.grad_accumulation` micro-batches on every rank. The loss is the sum of
per-token losses divided by the number of target tokens of the whole step (all micro-batches, all
ranks), so accumulation and data parallelism give the gradient one big batch would.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import random
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TextIO

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from assembler.build import build_model
from assembler.spec import Spec
from assembler.spec_errors import UserError
from assembler.train.checkpoint import (
    CHECKPOINTS_FOLDER,
    checkpoint_folder,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume_path,
    save_checkpoint,
)
from assembler.train.metrics import MetricsLogger, ThroughputMeter, flops_per_token, peak_flops, peak_memory_gib
from assembler.train.optim import build_lr_schedule, build_optimizer
from assembler.train.run_dir import check_same_model, run_folder, save_resolved_spec

IGNORE_INDEX = -100
HF_EXPORT_FOLDER = "hf"


class NonFiniteLossError(UserError):
    """The loss or gradient became NaN/inf (a user error: usually the lr or the data)."""


@dataclass(frozen=True)
class World:
    """This process's place in the job (torchrun's environment; one process without it)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    losses: dict[int, float]  # step -> loss, for the steps this process ran
    last_checkpoint: Path | None
    hf_export: Path | None


def init_world() -> World:
    """Join torchrun's process group when launched by it; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def parallelize_for_world(model: nn.Module, spec: Spec, world: World) -> nn.Module:
    """Apply the spec's parallel policy: activation checkpointing and compile always, FSDP2 across
    ranks when a process group exists (torchrun)."""
    from assembler.parallelize import parallelize

    return parallelize(model, spec)


def keep_freed_memory_for_reuse() -> None:
    """On CPU, stop glibc from handing large freed blocks back to the OS.

    Every step allocates and frees the same big tensors (the tiny spec's [T, 248320] logits and
    their gradients are hundreds of MB). By default glibc serves each from a fresh mmap and unmaps
    it on free, so every step page-faults them in again: measured here, that was nearly half of a
    CPU step's time (0.77 s -> 0.46 s per 128-token step of the tiny spec without it). Keeping
    allocations on the heap and not trimming it lets the next step reuse the same pages.
    A no-op where libc is not glibc.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**30)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _autocast(spec: Spec, world: World):
    """bf16 autocast for one unsharded GPU whose spec computes in bf16 (FSDP2 casts by itself)."""
    compute_dtype = _dtype(spec.parallel["fsdp"]["param_dtype"])
    if world.device.type == "cuda" and world.world_size == 1 and compute_dtype != torch.float32:
        return torch.autocast("cuda", dtype=compute_dtype)
    return nullcontext()


def _all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The collator's row (the model's keyword arguments) on `device`."""
    return {
        key: (value.to(device) if value is not None else None)
        for key, value in batch.items()
        if key in ("input_ids", "shift_labels", "pixel_values", "image_grid_thw", "packing")
    }


def _global_target_count(micro_batches: list[dict[str, Any]], device: torch.device) -> torch.Tensor:
    """Target tokens of the whole step: every micro-batch on every rank (a [] int64 tensor)."""
    local = sum(int((mb["shift_labels"] != IGNORE_INDEX).sum()) for mb in micro_batches)
    return _all_reduce_sum(torch.tensor(local, dtype=torch.int64, device=device))


def _grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf, foreach=True)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP2


def train(
    spec: Spec,
    *,
    output_dir: str | Path | None = None,
    resume: str | Path | None = None,
    stream: TextIO | None = None,
    world: World | None = None,
) -> TrainResult:
    """Train the model `spec` describes; see the module docstring. Returns the run's folder and losses.

    `output_dir` overrides `train.output_dir`. Without `resume`, the latest complete checkpoint in
    the run folder (if any) is resumed from; `resume` names a checkpoint or run folder instead.
    """
    from assembler.data import build_loader  # the data pipeline (tokenize, images, pack)

    world = world or init_world()
    if world.device.type == "cpu":
        keep_freed_memory_for_reuse()
    cfg = spec.train
    run_dir = run_folder(spec.name, output_dir if output_dir is not None else cfg.get("output_dir"))
    checkpoints_dir = run_dir / CHECKPOINTS_FOLDER
    resolved_yaml = spec.to_yaml()
    resume_from = resolve_resume_path(Path(resume)) if resume is not None else latest_checkpoint(checkpoints_dir)
    if world.is_main:
        if resume_from is not None and resume_from.parent == checkpoints_dir:
            check_same_model(run_dir, resolved_yaml)
        save_resolved_spec(run_dir, resolved_yaml)
    logger = MetricsLogger(run_dir, enabled=world.is_main, stream=stream)
    try:
        return _train(spec, world, run_dir, checkpoints_dir, resolved_yaml, resume_from, logger, build_loader)
    finally:
        logger.close()


def _train(spec, world, run_dir, checkpoints_dir, resolved_yaml, resume_from, logger, build_loader) -> TrainResult:
    cfg = spec.train
    total_steps = int(cfg["steps"])
    seed_everything(int(cfg["seed"]))

    loader = build_loader(spec, rank=world.rank, world_size=world.world_size)
    logger.message(f"data: {loader.epoch_stats(0).describe()}")
    model = build_model(spec, device=world.device, dtype=_dtype(cfg["dtype"]), seed=int(cfg["seed"]))
    if cfg.get("init_from"):
        from assembler.hf_checkpoint import load_hf_checkpoint

        load_hf_checkpoint(model, spec.resolve_path(cfg["init_from"]), spec)
    model = parallelize_for_world(model, spec, world)
    model.train()
    optimizer = build_optimizer(model, cfg["optimizer"])
    scheduler = build_lr_schedule(optimizer, cfg["schedule"], total_steps)

    start_step, last_checkpoint = 0, None
    if resume_from is not None:
        resumed = load_checkpoint(resume_from, model=model, optimizer=optimizer, scheduler=scheduler)
        loader.load_state_dict(resumed.data_state)
        start_step, last_checkpoint = resumed.step, resume_from
        logger.message(f"resumed from {resume_from} at step {start_step}")
    logger.truncate_after(start_step)
    logger.message(f"run folder: {run_dir}")

    every = int(cfg["checkpoint"]["every"])
    keep_last = int(cfg["checkpoint"]["keep_last"])
    log_every = max(int(cfg["log_every"]), 1)
    accumulation = int(cfg["grad_accumulation"])
    batches: Iterator[dict[str, Any]] = iter(loader)
    meter: ThroughputMeter | None = None
    losses: dict[int, float] = {}

    def save(step: int) -> Path:
        path = save_checkpoint(
            checkpoint_folder(checkpoints_dir, step),
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            step=step,
            data_state=loader.state_dict(),
            resolved_spec_yaml=resolved_yaml,
        )
        if world.is_main:
            prune_checkpoints(checkpoints_dir, keep_last)
        return path

    for step in range(start_step + 1, total_steps + 1):
        micro_batches = [next(batches) for _ in range(accumulation)]
        if meter is None:
            seq_len = micro_batches[0]["input_ids"].shape[-1]
            meter = ThroughputMeter(flops_per_token(model, spec.model["text"], seq_len), peak_flops(world.device))
        num_items = _global_target_count(micro_batches, world.device).clamp_min(1)
        lr = scheduler.get_last_lr()[0]
        step_loss = torch.zeros((), dtype=torch.float32, device=world.device)
        for micro_batch in micro_batches:
            with _autocast(spec, world):
                out = model(**_to_device(micro_batch, world.device), num_items_in_batch=num_items)
            out.loss.backward()
            step_loss += out.loss.detach().float()
            meter.add_tokens(micro_batch["input_ids"].numel())
        grad_norm = _grad_norm(model, float(cfg["grad_clip"]))
        loss = float(_all_reduce_sum(step_loss))
        if not (math.isfinite(loss) and math.isfinite(float(grad_norm))):
            kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"step {step}: the {'loss' if not math.isfinite(loss) else 'gradient norm'} is "
                f"{loss if not math.isfinite(loss) else float(grad_norm)}; training stopped before this update, "
                f"{kept}. Lower train.optimizer.lr or check the data, then run again: a run resumes from its folder's "
                f"latest checkpoint (or name one with --resume)."
            )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses[step] = loss

        if step % log_every == 0 or step == 1 or step == total_steps:
            tokens_per_s, mfu = meter.read_and_reset()
            record = {
                "step": step,
                "total_steps": total_steps,
                "loss": loss,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens_per_s": tokens_per_s,
                "peak_memory_gib": peak_memory_gib(world.device),
            }
            if mfu is not None:
                record["mfu"] = mfu
            logger.log(record)
        if step % every == 0 or step == total_steps:
            last_checkpoint = save(step)

    hf_export = None
    if cfg.get("export_hf"):
        hf_export = export_hf(model, spec, run_dir / HF_EXPORT_FOLDER)
        logger.message(f"HF export: {hf_export}")
    return TrainResult(run_dir=run_dir, losses=losses, last_checkpoint=last_checkpoint, hf_export=hf_export)


def export_hf(model: nn.Module, spec: Spec, out_dir: Path) -> Path:
    """The run's HF folder, in the dtype the model computes in (`parallel.fsdp.param_dtype`): the
    tiny spec's fp32 model exports fp32 (logits equal the trained model's), the 4B's bf16 as released.
    """
    from assembler.hf_checkpoint import save_hf_checkpoint

    dtype = _dtype(spec.parallel["fsdp"]["param_dtype"])
    source_dir = spec.resolve_path(spec.train["init_from"]) if spec.train.get("init_from") else None
    return save_hf_checkpoint(model, out_dir, spec, source_dir=source_dir, dtype=dtype, overwrite=True)
