"""Training checkpoints: `torch.distributed.checkpoint` for model and optimizer, plus per-rank
trainer state (step, lr schedule, RNG states, data position), with a completion marker.

Layout of one checkpoint, `<run>/checkpoints/step_000060/`:

    .metadata, __*_*.distcp        model + optimizer (DCP: sharded under FSDP2, whole otherwise)
    trainer_state_rank{r}.pt       step, scheduler, RNG states and data position of rank r
    resolved_spec.yaml             the spec that wrote it
    COMPLETE                       written last, after everything above is on disk

A folder without `COMPLETE` (a run killed mid-save) is not a checkpoint: resuming ignores it. A
folder with it whose files are damaged (truncated by a full disk, say) fails `verify_checkpoint`,
which checks every file DCP's metadata names is whole and the trainer state loads; auto-resume then
falls back to the previous complete checkpoint. The trainer state loads with `weights_only=True`
(plain containers and tensors, no arbitrary pickled objects), but DCP's `.metadata` is a pickle:
resume only from checkpoints you trust.
`get_state_dict`/`set_state_dict` give the same code path for a plain module and an FSDP2 one,
and DCP reshards on load: a checkpoint written by N ranks resumes on M ranks (M = 1 included).
"""

from __future__ import annotations

import random
import re
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict,
)

from assembler.parallel.distributed import first_failure_of_any_rank, process_rank, shared_by_every_rank
from assembler.common.durable_files import fsync_dir, is_disk_full, write_durably
from assembler.spec.errors import UserError

COMPLETE_MARKER = "COMPLETE"
CHECKPOINTS_FOLDER = "checkpoints"
ABANDONED_PREFIX = "abandoned-"
_STEP_FOLDER = re.compile(r"^step_(\d+)$")


class CheckpointSaveError(UserError):
    """A checkpoint could not be written for a reason the user fixes (a full disk)."""


class ResumeError(UserError):
    """A checkpoint that cannot be resumed from (a user error: wrong path, incomplete, other run)."""


@dataclass(frozen=True)
class ResumedState:
    """What the loop needs back from a checkpoint besides the restored modules."""

    step: int
    data_state: dict[str, Any]


def checkpoint_folder(checkpoints_dir: Path, step: int) -> Path:
    return Path(checkpoints_dir) / f"step_{step:06d}"


def is_complete(path: Path) -> bool:
    return (Path(path) / COMPLETE_MARKER).is_file()


def _step_folders(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    if not Path(checkpoints_dir).is_dir():
        return []
    found = []
    for child in Path(checkpoints_dir).iterdir():
        match = _STEP_FOLDER.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step under `checkpoints_dir`, or None."""
    complete = complete_checkpoints(checkpoints_dir)
    return complete[-1] if complete else None


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """The complete checkpoints under `checkpoints_dir`, oldest first."""
    return [path for _, path in _step_folders(checkpoints_dir) if is_complete(path)]


def latest_loadable_checkpoint(checkpoints_dir: Path, warn) -> Path | None:
    """The newest complete checkpoint that passes `verify_checkpoint`; `warn(message)` is told about
    each newer one skipped as damaged."""
    for path in reversed(complete_checkpoints(checkpoints_dir)):
        try:
            verify_checkpoint(path)
            return path
        except ResumeError as error:
            warn(f"warning: {error}; falling back to the previous complete checkpoint")
    return None


def checkpoint_step(path: Path) -> int:
    """The step a complete checkpoint was written at (from its COMPLETE marker, `step N`)."""
    try:
        return int((Path(path) / COMPLETE_MARKER).read_text().split()[1])
    except (OSError, IndexError, ValueError):
        match = _STEP_FOLDER.match(Path(path).name)
        if match:
            return int(match.group(1))
        raise ResumeError(f"{path / COMPLETE_MARKER}: unreadable; the checkpoint is damaged, resume from another one") from None


def verify_checkpoint(path: Path) -> None:
    """Raise ResumeError naming the file when a complete-marked checkpoint cannot be loaded whole:
    its DCP metadata is unreadable, a data file it names is missing or shorter than the metadata
    says, or a trainer state does not load. Reads the small files only."""
    path = Path(path)
    advice = "resume from an earlier checkpoint (--resume), or delete this one"
    try:
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as error:  # a torn or missing pickle: any exception means unreadable
        raise ResumeError(f"{path / '.metadata'}: cannot be read ({type(error).__name__}: {error}); {advice}") from None
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), int(info.offset) + int(info.length))
    for name, size in sorted(needed.items()):
        file = path / name
        have = file.stat().st_size if file.is_file() else None
        if have is None or have < size:
            state = "is missing" if have is None else f"holds {have} bytes, {size} expected (truncated)"
            raise ResumeError(f"{file}: {state}; {advice}")
    states = sorted(path.glob("trainer_state_rank*.pt"))
    if not states:
        raise ResumeError(f"{path} has no trainer_state_rank0.pt: the checkpoint is damaged; {advice}")
    for file in states:
        _load_trainer_state(file)


def _load_trainer_state(file: Path) -> dict[str, Any]:
    """A trainer state: plain containers, numbers and tensors only (`weights_only=True`)."""
    try:
        state = torch.load(file, weights_only=True)
    except Exception as error:  # truncated, or holds objects weights_only refuses to unpickle
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ResumeError(
            f"{file}: cannot be loaded as a trainer state ({first}); it is damaged or not this project's; "
            "resume from an earlier checkpoint (--resume), or delete this one"
        ) from None
    if not isinstance(state, dict) or not {"step", "scheduler", "rng", "data"} <= set(state):
        raise ResumeError(f"{file}: not a trainer state (expected step, scheduler, rng, data)")
    return state


def abandon_newer_checkpoints(checkpoints_dir: Path, step: int) -> Path | None:
    """Move every complete checkpoint newer than `step` into `checkpoints/abandoned-<time>/` (resuming from an
    older step starts another history; the newer checkpoints are kept, but never resumed from or
    pruned). Returns the folder they went to, or None when there were none."""
    # Incomplete ones are no history, only a killed save's leftovers: the next save or prune removes them.
    newer = [path for folder_step, path in _step_folders(checkpoints_dir) if folder_step > step and is_complete(path)]
    if not newer:
        return None
    folder = Path(checkpoints_dir) / f"{ABANDONED_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = folder.with_name(f"{folder.name.split('.')[0]}.{suffix}")
    folder.mkdir()
    for path in newer:
        path.rename(folder / path.name)
    fsync_dir(folder)
    fsync_dir(Path(checkpoints_dir))
    return folder


def resolve_resume_path(path: Path) -> Path:
    """`--resume PATH` accepts a checkpoint folder, a run's `checkpoints/` folder, or a run folder."""
    path = Path(path)
    if is_complete(path):
        verify_checkpoint(path)
        return path
    for candidate in (path, path / CHECKPOINTS_FOLDER):
        latest = latest_checkpoint(candidate)
        if latest is not None:
            verify_checkpoint(latest)
            return latest
    if not path.exists():
        raise ResumeError(f"--resume {path}: no such file or folder")
    if _STEP_FOLDER.match(path.name):
        raise ResumeError(
            f"--resume {path}: this checkpoint is incomplete (no {COMPLETE_MARKER} marker: the run stopped while saving it); "
            f"resume from an earlier one in {path.parent}"
        )
    raise ResumeError(f"--resume {path}: no complete checkpoint found here (expected a step_NNNNNN folder holding {COMPLETE_MARKER})")


def prune_checkpoints(checkpoints_dir: Path, keep_last: int, *, just_written: Path | None = None) -> None:
    """Keep the newest `keep_last` complete checkpoints (and `just_written`, always); drop older
    ones and stale incomplete ones. Only step folders are touched, never `abandoned-*`."""
    folders = _step_folders(checkpoints_dir)
    complete_steps = [step for step, path in folders if is_complete(path)]
    keep = set(complete_steps[-keep_last:]) if keep_last > 0 else set()
    newest_complete = complete_steps[-1] if complete_steps else -1
    protected = Path(just_written).resolve() if just_written is not None else None
    for step, path in folders:
        if protected is not None and path.resolve() == protected:
            continue
        # An incomplete folder newer than every complete one may still be being written.
        if step not in keep and (is_complete(path) or step < newest_complete):
            # The marker goes first: a kill mid-removal leaves an incomplete folder, never a
            # complete-marked one with files missing.
            (path / COMPLETE_MARKER).unlink(missing_ok=True)
            fsync_dir(path)
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    # DCP warns that it assumes one process when no process group exists; that is the intent here.
    with warnings.catch_warnings():
        if not (dist.is_available() and dist.is_initialized()):
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()




def rng_states() -> dict[str, Any]:
    """Every RNG the run draws from: torch CPU, the current CUDA device, python, numpy."""
    np_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    data_state: dict[str, Any],
    resolved_spec_yaml: str,
) -> Path:
    """Write a complete checkpoint into `path` (every rank calls this); returns `path`.

    The marker is written by rank 0 only after every rank has flushed its files, so a folder with
    the marker is whole.
    """
    path = Path(path)
    if process_rank() == 0 and path.exists():
        shutil.rmtree(path)  # a stale incomplete attempt at this step
    _barrier()
    # A full disk may stop any one rank (its shard, its trainer state) or rank 0 alone (the
    # marker): each phase ends with the ranks agreeing on whether one failed, so all of them stop
    # together, with one message, instead of the others waiting in the next collective.
    failure = None
    try:
        path.mkdir(parents=True, exist_ok=True)
        model_state, optim_state = get_state_dict(model, optimizer)
        with _single_process_quiet():
            dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(path))
        trainer_state = {"step": step, "scheduler": scheduler.state_dict(), "rng": rng_states(), "data": data_state,
                         "stateless": _stateless_parameters(optim_state)}
        write_durably(path / f"trainer_state_rank{process_rank()}.pt", lambda f: torch.save(trainer_state, f))
    except (Exception, CheckpointException) as error:
        if not is_disk_full(error):
            raise
        failure = "no space left on the device"
    failure = first_failure_of_any_rank(failure)  # also the barrier: every rank's files are flushed
    if failure is None and process_rank() == 0:
        try:
            write_durably(path / "resolved_spec.yaml", lambda f: f.write(resolved_spec_yaml.encode()))
            fsync_dir(path)
            write_durably(path / COMPLETE_MARKER, lambda f: f.write(f"step {step}\n".encode()))
            fsync_dir(path)
        except Exception as error:  # noqa: BLE001 (only a full disk is handled; the rest is re-raised)
            if not is_disk_full(error):
                raise
            failure = "no space left on the device"
    failure = first_failure_of_any_rank(failure)
    if failure is not None:
        if process_rank() == 0:
            (path / COMPLETE_MARKER).unlink(missing_ok=True)
            shutil.rmtree(path, ignore_errors=True)  # an incomplete folder only takes space
        raise shared_by_every_rank(CheckpointSaveError(
            f"{path}: the disk is full ({failure}) while writing the step-{step} checkpoint; it was removed, "
            f"the earlier checkpoints are untouched. Free space (or lower train.checkpoint.keep_last) and run the "
            f"same command again: it resumes from the latest complete checkpoint"
        ))
    return path


def _stateless_parameters(optim_state: dict[str, Any]) -> list[str]:
    """The trainable parameters the optimizer holds no state for yet (never had a gradient: a vision
    tower that has seen no image). DCP saves no entry for them, so a resume must not ask for one."""
    return sorted(name for group in optim_state["param_groups"] for name in group["params"] if name not in optim_state["state"])


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> ResumedState:
    """Restore model, optimizer, scheduler and RNG states in place from a complete checkpoint.

    The optimizer's and scheduler's state (moments, step count) comes from the checkpoint, but their
    settings are the ones `optimizer` and `scheduler` were built with, i.e. the spec in force now:
    a changed lr, betas, weight decay, schedule or step count takes effect from the next step.
    """
    path = Path(path)
    if not is_complete(path):
        raise ResumeError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    state_file = path / f"trainer_state_rank{process_rank()}.pt"
    if not state_file.is_file():
        # Written by fewer ranks than this run has. Step, schedule and data position are the same
        # on every rank, and every rank seeds its RNGs alike, so rank 0's state serves any rank.
        state_file = path / "trainer_state_rank0.pt"
    if not state_file.is_file():
        raise ResumeError(f"{path} has no trainer_state_rank0.pt: the checkpoint is damaged; resume from another one")
    trainer_state = _load_trainer_state(state_file)
    settings_now = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    base_lrs_now = list(scheduler.base_lrs)
    stateless = set(trainer_state.get("stateless", []))  # had no state when saved: none is read, none is set
    model_state, optim_state = get_state_dict(model, optimizer)  # fills in a state for every parameter
    for name in stateless:
        optim_state["state"].pop(name, None)
    state = {"model": model_state, "optimizer": optim_state}
    try:
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=str(path))
    except (Exception, CheckpointException) as error:  # DCP wraps file errors (in a BaseException)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ResumeError(
            f"{path}: the model and optimizer state cannot be loaded ({first[:300]}); the checkpoint is damaged "
            "or was written for another model; resume from an earlier checkpoint (--resume)"
        ) from None
    # strict=False only lets the stateless parameters stay without a state (the model's keys are its
    # own, and DCP has checked every one of them against the files).
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=not stateless))
    for name, parameter in model.named_parameters():  # as the saved run: no state until a first gradient
        if name in stateless:
            optimizer.state.pop(parameter, None)
    scheduler.load_state_dict(trainer_state["scheduler"])
    _apply_current_settings(optimizer, scheduler, settings_now, base_lrs_now)
    set_rng_states(trainer_state["rng"])
    return ResumedState(step=int(trainer_state["step"]), data_state=trainer_state["data"])


def _apply_current_settings(optimizer, scheduler, settings_now: list[dict], base_lrs_now: list[float]) -> None:
    """Put the settings the optimizer and scheduler were built with back over the restored ones, and
    set each group's lr to what the current schedule gives at the restored step (exactly the value
    an uninterrupted run computes: base_lr · multiplier(step), as LambdaLR does)."""
    for group, settings in zip(optimizer.param_groups, settings_now):
        group.update(settings)
    scheduler.base_lrs = base_lrs_now
    lrs = [base_lr * multiplier(scheduler.last_epoch) for multiplier, base_lr in zip(scheduler.lr_lambdas, scheduler.base_lrs)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs  # what get_last_lr() reports (the lr of the next step)


def load_model_weights(path: Path, model: nn.Module) -> None:
    """Only the model's weights from a complete checkpoint (evaluation, export, tests)."""
    path = Path(path)
    if not is_complete(path):
        raise ResumeError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    state = {"model": get_model_state_dict(model)}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
