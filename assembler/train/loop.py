"""The training loop of `assemble train`: build → parallelize → optimizer → steps → checkpoints →
HF export.

One optimizer step (`assembler.train.step.training_step`, also what `assemble bench` times) =
`train.grad_accumulation` micro-batches on every rank, the loss normalised by the step's global
target-token count.

On a CUDA machine every run is FSDP2-sharded (assembler.parallel.distributed): over torchrun's ranks, or
over a world of one for a plain process, so one GPU and N GPUs run the same code. Gradients are
summed over ranks, not averaged (each rank's loss is already its share of the global one); rank r
takes every world_size-th row of the global stream, so W ranks with accumulation A see the rows of
one process with accumulation W·A. Only rank 0 logs and writes metrics. A plain CPU process is not
sharded (the path that is bitwise transformers').
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TextIO

import numpy as np
import torch
import yaml
from torch import nn

from assembler.adapters.lora import initialize_spec_adapters
from assembler.model.build import build_model, check_ops_can_train, decide_auto_ops, resolve_spec_ops
from assembler.data.records import DataError
from assembler.parallel.distributed import World, broadcast_from_main, init_world, shared_by_every_rank
from assembler.parallel.float8 import FLOAT8_DESCRIPTION, FLOAT8_ROWWISE, check_precision_can_run
from assembler.parallel.parallelize import replicated_parameters
from assembler.spec import Spec
from assembler.spec.errors import UserError
from assembler.train.checkpoint import (
    CHECKPOINTS_FOLDER,
    ResumeError,
    abandon_newer_checkpoints,
    checkpoint_folder,
    checkpoint_step,
    complete_checkpoints,
    latest_loadable_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume_path,
    save_checkpoint,
)
from assembler.train.compile_history import compile_as_job, new_compile_job, save_compile_job, saved_compile_job
from assembler.train.freeze import parameter_counts
from assembler.train.metrics import METRICS_FILE, MetricsLogger, StepTimer, flops_per_token, peak_flops, peak_memory_gib
from assembler.train.optim import build_lr_schedule, build_optimizer
from assembler.train.run_dir import ADAPTER_EXPORT_FOLDER, HF_EXPORT_FOLDER, RESOLVED_SPEC_FILE, check_same_model, resume_changes, run_folder, save_resolved_spec
from assembler.train.memory_estimate import estimate_step_memory
from assembler.train.startup_checks import check_can_start, spec_warnings
from assembler.train.step import NonFiniteStep, training_step
from assembler.train.trained_parameters import choose_trained_parameters
from blocks.constants import DTYPES


class OutOfMemory(UserError):
    """A step ran out of the device's (or host's) memory (a user error: the spec asks too much)."""


class NonFiniteLossError(UserError):
    """The loss or gradient became NaN/inf (a user error: usually the lr or the data)."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    losses: dict[int, float]  # step -> loss, for the steps this process ran
    last_checkpoint: Path | None
    hf_export: Path | None


def parallelize_for_world(model: nn.Module, spec: Spec, world: World) -> nn.Module:
    """Apply the spec's parallel policy: activation checkpointing and compile always, FSDP2 over
    `world.mesh` under torchrun, with gradients summed over ranks (the loss is globally normalised)."""
    from assembler.parallel.parallelize import parallelize, sum_gradients_across_ranks

    model = parallelize(model, spec, mesh=world.mesh)
    if world.is_distributed:
        sum_gradients_across_ranks(model)
    return model


def build_for_world(spec: Spec, world: World) -> nn.Module:
    """The built, parallelized model, with its initial weights (random or `train.init_from`).

    Sharded with `init_from`: built on the meta device, sharded, then each rank allocates and loads
    only its own shard, so the whole model never exists on one rank. Random init is drawn whole on
    every rank from the same seed (so it equals the one-process model) and then sharded.
    """
    cfg = spec.settings.train
    dtype = DTYPES[cfg.dtype]
    init_from = spec.resolve_path(cfg.init_from) if cfg.init_from else None
    from assembler.hf.checkpoint import load_hf_checkpoint

    if init_from is not None and world.is_distributed:
        model = build_model(spec, device="meta").to(dtype)
        choose_trained_parameters(model, spec, initialize_adapters=False)  # adapters filled once allocated
        model = parallelize_for_world(model, spec, world)
        # FSDP2's CPU offload keeps the sharded parameters in host memory (it copies them in per unit).
        shard_device = torch.device("cpu") if spec.settings.parallel.fsdp.cpu_offload else world.device
        model.to_empty(device=shard_device)
        for param in replicated_parameters(model):  # FSDP2 never moves them: they compute where they live
            param.data = param.data.to(world.device)
        load_hf_checkpoint(model, init_from, spec, device=shard_device)
        if cfg.adapters is not None:
            initialize_spec_adapters(model, spec, device=shard_device)
        return model
    model = build_model(spec, device=world.device, dtype=dtype, seed=cfg.seed)
    if init_from is not None:
        load_hf_checkpoint(model, init_from, spec)
    choose_trained_parameters(model, spec, device=world.device)
    return parallelize_for_world(model, spec, world)


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
    from assembler.hf.checkpoint.writing import check_export_target

    world = world or init_world()
    check_ops_can_train(spec, world.device.type, sharded=world.is_distributed)
    check_precision_can_run(spec, world.device.type)
    spec, ops_choice = decide_auto_ops(spec, world.device.type, sharded=world.is_distributed)
    try:  # before the run folder and before any allocation: every rank checks alike
        check_can_start(spec, world.device, world.world_size, ranks_per_host=int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    except UserError as error:
        raise shared_by_every_rank(error) from None
    if world.device.type == "cpu":
        keep_freed_memory_for_reuse()
    cfg = spec.settings.train
    run_dir = run_folder(spec.name, output_dir if output_dir is not None else cfg.output_dir)
    checkpoints_dir = run_dir / CHECKPOINTS_FOLDER
    resolved_yaml = spec.to_yaml()
    new_run_dir = not run_dir.exists()  # a run that fails before its first step leaves none behind
    # Rank 0 decides (what to resume, whether the folder is this model's) and every rank follows,
    # so a refusal stops all ranks instead of leaving the others waiting in a collective. Every
    # check comes before the first write to the run folder.
    decision: tuple[Path | None, UserError | None, list[str], dict | None, str | None] = (None, None, [], None, None)
    if world.is_main:
        notes: list[str] = []
        kept_plan = None
        try:
            if resume is not None:  # named by the user: a damaged checkpoint is an error naming the file
                resume_from = resolve_resume_path(Path(resume))
            else:  # the newest whole one; damaged newer ones are reported and skipped
                resume_from = latest_loadable_checkpoint(checkpoints_dir, notes.append)
                if resume_from is None and complete_checkpoints(checkpoints_dir):
                    raise ResumeError(
                        "\n".join(notes + [f"every checkpoint in {checkpoints_dir} is damaged, so this run would start "
                                            "over; to do that, choose a new folder with --output-dir (or move these away)"])
                    )
            resumed_step = checkpoint_step(resume_from) if resume_from is not None else 0
            if resume_from is not None:
                kept_plan = planned_checkpointing_of(resume_from / RESOLVED_SPEC_FILE, spec)
                if kept_plan is not None:
                    spec = _with_checkpointing(spec, kept_plan)
                    resolved_yaml = spec.to_yaml()
                    notes.append(f"activation checkpointing (auto): kept the plan of the checkpoint's run, {kept_plan}, so "
                                 "the resume computes as the run did (to plan anew, start a new run folder)")
                notes += resume_changes(resume_from / RESOLVED_SPEC_FILE, resolved_yaml, resumed_step)
                if resume_from.parent == checkpoints_dir:
                    check_same_model(run_dir, resolved_yaml)
            if cfg.export_hf:  # refused now, not after the whole run
                check_export_target(run_dir / HF_EXPORT_FOLDER, True, inputs=_export_inputs(spec))
                if cfg.adapters is not None:
                    check_export_target(run_dir / ADAPTER_EXPORT_FOLDER, True, inputs=_export_inputs(spec))
            abandoned = abandon_newer_checkpoints(checkpoints_dir, resumed_step)
            if abandoned is not None:
                notes.append(
                    f"checkpoints newer than step {resumed_step} ({', '.join(sorted(p.name for p in abandoned.iterdir()))}) "
                    f"belong to the history this run leaves; moved to {abandoned} (never resumed from or pruned; "
                    "delete it when you no longer need it)"
                )
            save_resolved_spec(run_dir, resolved_yaml)
            compile_job = saved_compile_job(run_dir) or new_compile_job()  # see compile_history.py
            save_compile_job(run_dir, compile_job)
            decision = (resume_from, None, notes, kept_plan, compile_job)
        except UserError as error:
            decision = (None, error, [], None, None)
    resume_from, error, notes, kept_plan, compile_job = broadcast_from_main(decision)
    if error is not None:
        raise shared_by_every_rank(error)
    compile_as_job(compile_job)  # before anything compiles (the auto plan's probe included)
    if kept_plan is not None and not world.is_main:
        spec = _with_checkpointing(spec, kept_plan)
        resolved_yaml = spec.to_yaml()
    logger = MetricsLogger(run_dir, enabled=world.is_main, stream=stream)
    for note in notes:
        logger.message(note)
    for warning in spec_warnings(spec):
        logger.message(f"warning: {warning}")
    try:
        if ops_choice:
            logger.message(ops_choice)
        # What each op runs here, including the kernels its backend picks per call (OpTable.backends).
        logger.message("kernels per op:\n" + "\n".join("  " + line for line in resolve_spec_ops(spec).describe().splitlines()))
        if spec.settings.parallel.precision.matmul == FLOAT8_ROWWISE:
            logger.message(f"matmuls: {FLOAT8_DESCRIPTION}")
        try:
            return _train(spec, world, run_dir, checkpoints_dir, resolved_yaml, resume_from, logger, build_loader)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not isinstance(error, torch.OutOfMemoryError) and "can't allocate memory" not in str(error):
                raise
            # The start-up estimate is a lower bound: a step can still run out. Say so, not a traceback.
            raise OutOfMemory(f"out of memory ({str(error).splitlines()[0]}). To fit: "
                              f"{estimate_step_memory(spec, world.device, world.world_size).remedies(spec, world.device.type)}") from None
    except BaseException:
        logger.close()
        if new_run_dir and world.is_main and not _trained_anything(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        logger.close()


def _trained_anything(run_dir: Path) -> bool:
    """Whether a run folder holds a step's trace: a metrics record or a checkpoint."""
    metrics = run_dir / METRICS_FILE
    return (metrics.is_file() and metrics.stat().st_size > 0) or any((run_dir / CHECKPOINTS_FOLDER).glob("step_*"))


def _plan_auto_checkpointing(spec, world, run_dir, resolved_yaml, logger, build_loader):  # noqa: ANN001, ANN202
    """`activation_checkpointing.mode: auto`: rank 0 measures on the run's first batch (drawn from a
    loader of its own, so the run's data position is untouched) and plans; every rank applies the
    plan, which replaces `auto` in the resolved spec. Other modes: unchanged."""
    if spec.settings.parallel.activation_checkpointing.mode != "auto":
        return spec, resolved_yaml
    from assembler.parallel.activation_checkpoint_probe import resolve_auto_checkpointing

    decision: tuple = (None, None, None)
    if world.is_main:
        try:
            first_batch = next(iter(build_loader(spec, rank=world.rank, world_size=world.world_size)))
            planned, line = resolve_auto_checkpointing(spec, first_batch, world.device, world_size=world.world_size)
            decision = (planned.to_dict()["parallel"]["activation_checkpointing"], line, None)
        except UserError as error:
            decision = (None, None, error)
    section, line, error = broadcast_from_main(decision)
    if error is not None:
        raise shared_by_every_rank(error)
    spec = _with_checkpointing(spec, section)
    logger.message(line)
    resolved_yaml = spec.to_yaml()
    if world.is_main:
        save_resolved_spec(run_dir, resolved_yaml)
    return spec, resolved_yaml


def planned_checkpointing_of(saved_spec: Path, spec: Spec) -> dict | None:
    """For a spec whose activation checkpointing is `auto`: the plan the resumed checkpoint's run
    made (its resolved spec's section), which the resume keeps: a new probe could time the blocks
    differently and choose another plan, whose compiled graphs would not compute the same bits.
    None when the spec is not `auto` or the saved spec has no plan."""
    if spec.settings.parallel.activation_checkpointing.mode != "auto" or not Path(saved_spec).is_file():
        return None
    try:
        saved = yaml.safe_load(Path(saved_spec).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return None  # resume_changes reads the same file next and names the damage
    parallel = saved.get("parallel") if isinstance(saved, dict) else None
    section = parallel.get("activation_checkpointing") if isinstance(parallel, dict) else None
    return section if isinstance(section, dict) and section.get("mode") not in (None, "auto") else None


def _with_checkpointing(spec: Spec, section: dict) -> Spec:
    return spec.replaced("parallel.activation_checkpointing", section)


def _train(spec, world, run_dir, checkpoints_dir, resolved_yaml, resume_from, logger, build_loader) -> TrainResult:
    cfg = spec.settings.train
    total_steps = cfg.steps
    seed_everything(cfg.seed)

    loader = build_loader(spec, rank=world.rank, world_size=world.world_size)
    logger.message(f"data: {loader.describe()}")  # plans the first window: bad data there stops us before the model is built
    if world.is_distributed:
        logger.message(f"distributed: {world.world_size} ranks, FSDP2 over {world.device.type}")
    spec, resolved_yaml = _plan_auto_checkpointing(spec, world, run_dir, resolved_yaml, logger, build_loader)
    model = build_for_world(spec, world)
    model.train()
    counts = parameter_counts(model)
    logger.message(counts.describe())
    logger.summary({"parameters": counts.to_dict()})
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_lr_schedule(optimizer, cfg.schedule, total_steps)

    start_step, last_checkpoint = 0, None
    if resume_from is not None:
        resumed = load_checkpoint(resume_from, model=model, optimizer=optimizer, scheduler=scheduler)
        loader.load_state_dict(resumed.data_state)
        start_step, last_checkpoint = resumed.step, resume_from
        logger.message(f"resumed from {resume_from} at step {start_step}")
    logger.truncate_after(start_step)
    logger.message(f"run folder: {run_dir}")

    every = cfg.checkpoint.every
    keep_last = cfg.checkpoint.keep_last
    log_every = max(cfg.log_every, 1)
    accumulation = cfg.grad_accumulation
    batches: Iterator[dict[str, Any]] = iter(loader)
    timer: StepTimer | None = None
    losses: dict[int, float] = {}

    def save(step: int, data_state: dict[str, Any] | None = None) -> Path:
        path = save_checkpoint(
            checkpoint_folder(checkpoints_dir, step),
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            step=step,
            data_state=data_state or loader.state_dict(),
            resolved_spec_yaml=resolved_yaml,
        )
        if world.is_main:
            prune_checkpoints(checkpoints_dir, keep_last, just_written=path)
        return path

    for step in range(start_step + 1, total_steps + 1):
        data_start = time.perf_counter()
        position = loader.state_dict()
        try:
            micro_batches = [next(batches) for _ in range(accumulation)]
        except DataError as error:  # a bad record met while streaming: keep the steps done, then stop
            done = step - 1
            if done > start_step and (last_checkpoint is None or checkpoint_step(last_checkpoint) < done):
                last_checkpoint = save(done, data_state=position)  # even with checkpoint.every 0: nothing lost
            kept = f"steps 1-{done} are saved in {last_checkpoint}, which the next run resumes from" if done else "no step was trained"
            raise DataError(f"step {step}: {error}\n{kept}; fix the record or set data.on_error: skip, then run again") from None
        if timer is None:
            seq_len = micro_batches[0]["input_ids"].shape[-1]
            timer = StepTimer(flops_per_token(model, spec.settings.model.text, seq_len), peak_flops(world.device))
        step_start = time.perf_counter()
        try:
            outcome = training_step(model, optimizer, scheduler, micro_batches, world=world, grad_clip=float(cfg.grad_clip))
        except NonFiniteStep as bad:
            kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"step {step}: {bad}; training stopped before this update, "
                f"{kept}. Lower train.optimizer.lr or check the data, then run again: a run resumes from its folder's "
                f"latest checkpoint (or name one with --resume), and a changed lr takes effect from there."
            ) from None
        timer.add_step(outcome.tokens, time.perf_counter() - step_start, step_start - data_start)
        losses[step] = outcome.loss

        if step % log_every == 0 or step == 1 or step == total_steps:
            record = {
                "step": step,
                "total_steps": total_steps,
                "loss": outcome.loss,
                **({"mtp_loss": outcome.mtp_loss} if outcome.mtp_loss is not None else {}),
                "lr": outcome.lr,
                "grad_norm": outcome.grad_norm,
                **timer.read_interval(steps_left=total_steps - step),
                "peak_memory_gib": peak_memory_gib(world.device),
            }
            logger.log(record)
        if every and (step % every == 0 or step == total_steps):
            last_checkpoint = save(step)

    if timer is not None and timer.steady_state() is not None:
        steady = timer.steady_state()
        logger.message(f"steady state ({steady.describe()}), peak memory {peak_memory_gib(world.device):.1f} GiB")
        logger.summary({"steady_state": {**steady.to_dict(), "peak_memory_gib": peak_memory_gib(world.device)}})
    hf_export = None
    if cfg.export_hf:
        hf_export = export_hf(model, spec, run_dir / HF_EXPORT_FOLDER)
        logger.message(f"HF export: {hf_export}" + (" (adapters merged)" if cfg.adapters is not None else ""))
        if cfg.adapters is not None:
            from assembler.adapters.peft_folder import save_adapter_folder

            adapter = save_adapter_folder(model, run_dir / ADAPTER_EXPORT_FOLDER, spec, overwrite=True, inputs=_export_inputs(spec))
            logger.message(f"adapter export (PEFT): {adapter}")
    return TrainResult(run_dir=run_dir, losses=losses, last_checkpoint=last_checkpoint, hf_export=hf_export)


def export_hf(model: nn.Module, spec: Spec, out_dir: Path) -> Path:
    """The run's HF folder, in the dtype `assemble export` writes too (`model_export_dtype`: the
    one the model computes in)."""
    from assembler.hf.checkpoint import save_hf_checkpoint
    from assembler.hf.checkpoint.dtype_policy import model_export_dtype

    source_dir = spec.resolve_path(spec.settings.train.init_from) if spec.settings.train.init_from else None
    return save_hf_checkpoint(model, out_dir, spec, source_dir=source_dir, dtype=model_export_dtype(spec), overwrite=True)


def _export_inputs(spec: Spec) -> tuple[Path, ...]:
    """Folders the run's exports read from (they may not replace them): `train.init_from` and
    `train.adapters.init_from`."""
    train = spec.settings.train
    adapter_init = train.adapters.init_from if train.adapters is not None else None
    return tuple(spec.resolve_path(path) for path in (train.init_from, adapter_init) if path)
