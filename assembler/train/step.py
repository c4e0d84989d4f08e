"""One optimizer step of `assemble train`, the one function `assemble bench` times as well.

A step is `len(micro_batches)` forward/backward passes on this rank, then gradient clipping and
the optimizer and schedule steps. The loss is the sum of per-token losses divided by the number of
target tokens of the whole step (all micro-batches, all ranks), so accumulation and data
parallelism give the gradient one big batch would. Every rank runs the vision tower on every
micro-batch in which any rank has an image (on a blank one when it has none), so the ranks' FSDP
collectives always match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from assembler.distributed import World, all_reduce_sum
from blocks.constants import IGNORE_INDEX

MODEL_INPUTS = ("input_ids", "shift_labels", "pixel_values", "image_grid_thw", "packing")


@dataclass(frozen=True)
class StepOutcome:
    """What one optimizer step gives back. `tokens`: the tokens this rank ran (padding included)."""

    loss: float
    grad_norm: float
    lr: float
    tokens: int


class NonFiniteStep(Exception):
    """The step's loss or gradient norm is NaN/inf; raised before the update, so the weights are untouched."""

    def __init__(self, what: str, value: float):
        super().__init__(f"the {what} is {value}")
        self.what, self.value = what, value


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The collator's row (the model's keyword arguments) on `device`."""
    return {key: (value.to(device) if value is not None else None) for key, value in batch.items() if key in MODEL_INPUTS}


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    micro_batches: list[dict[str, Any]],
    *,
    world: World,
    grad_clip: float,
    on_phase: Callable[[str], None] | None = None,
) -> StepOutcome:
    """Forward + backward over `micro_batches` (collator rows, on the host or the device), clip,
    optimizer step, schedule step. Raises NonFiniteStep (before the update) on a NaN/inf loss or
    gradient norm. `on_phase("backward" | "optimizer")` is called as each phase starts (the
    benchmark's memory report uses it to say where the peak falls)."""
    num_items, images_anywhere = _step_totals(micro_batches, world.device)
    num_items = num_items.clamp_min(1)
    lr = scheduler.get_last_lr()[0]
    step_loss = torch.zeros((), dtype=torch.float32, device=world.device)
    tokens = 0
    for micro_batch, any_rank_has_images in zip(micro_batches, images_anywhere):
        # Only when sharded: the vision collectives of the ranks must match (see the module docstring).
        idle_vision = world.is_distributed and any_rank_has_images and micro_batch.get("pixel_values") is None
        out = model(**to_device(micro_batch, world.device), num_items_in_batch=num_items, idle_vision=idle_vision)
        if on_phase is not None:
            on_phase("backward")
        out.loss.backward()
        step_loss += out.loss.detach().float()
        tokens += micro_batch["input_ids"].numel()
    grad_norm = float(_grad_norm(model, grad_clip))
    loss = float(all_reduce_sum(step_loss))
    if not math.isfinite(loss):
        raise NonFiniteStep("loss", loss)
    if not math.isfinite(grad_norm):
        raise NonFiniteStep("gradient norm", grad_norm)
    if on_phase is not None:
        on_phase("optimizer")
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(loss=loss, grad_norm=grad_norm, lr=lr, tokens=tokens)


def _step_totals(micro_batches: list[dict[str, Any]], device: torch.device) -> tuple[torch.Tensor, list[bool]]:
    """One all-reduce per step: the target tokens of the whole step (every micro-batch on every
    rank, a [] int64 tensor), and for each micro-batch index whether any rank's has an image."""
    local = [sum(int((mb["shift_labels"] != IGNORE_INDEX).sum()) for mb in micro_batches)]
    local += [int(mb.get("pixel_values") is not None) for mb in micro_batches]
    totals = all_reduce_sum(torch.tensor(local, dtype=torch.int64, device=device)).tolist()
    return torch.tensor(totals[0], dtype=torch.int64, device=device), [count > 0 for count in totals[1:]]


def _grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The global gradient norm (clipped to `max_norm` when > 0), a plain tensor also under FSDP2."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf, foreach=True)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP2
