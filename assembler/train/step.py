"""One optimizer step of `assemble train`, the one function `assemble bench` times as well.

A step is `len(micro_batches)` forward/backward passes on this rank, then gradient clipping and
the optimizer and schedule steps. The loss is the sum of per-token losses divided by the number of
target tokens of the whole step (all micro-batches, all ranks), so accumulation and data
parallelism give the gradient one big batch would. Every rank runs the vision tower on every
micro-batch in which any rank has an image or a video (on a blank image when it has neither), so the ranks' FSDP
collectives always match. A model with a multi-token-prediction head (`model.mtp`, the module at
`model.mtp`) backpropagates loss + loss_weight x mtp_loss; its MTP loss is normalised the same way,
by the step's global count of MTP targets, and reported apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from assembler.parallel.distributed import World, all_reduce_sum
from assembler.parallel.parallelize import reduce_replicated_gradients
from blocks.constants import IGNORE_INDEX
from blocks.multi_token_prediction import next_next_token_labels
from blocks.packing import PackingContext, host_to_device
from blocks.vision_grid import VisionLayout

MODEL_INPUTS = ("input_ids", "shift_labels", "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                "image_layout", "video_layout", "packing")


@dataclass(frozen=True)
class StepOutcome:
    """What one optimizer step gives back. `loss`: the next-token loss; `mtp_loss`: the
    multi-token-prediction head's (unweighted), None without one. `tokens`: the tokens this rank
    ran (padding included)."""

    loss: float
    grad_norm: float
    lr: float
    tokens: int
    mtp_loss: float | None = None


class NonFiniteStep(Exception):
    """The step's loss or gradient norm is NaN/inf; raised before the update, so the weights are untouched."""

    def __init__(self, what: str, value: float):
        super().__init__(f"the {what} is {value}")
        self.what, self.value = what, value


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The collator's row (the model's keyword arguments) on `device`, every tensor in it included,
    queued without waiting for the GPU (`host_to_device`), so the host runs ahead into the step
    while the GPU finishes the last one. (A host tensor left among the arguments would be copied by
    FSDP2's root pre-forward, with a copy that waits.) The vision tower reads the row's
    VisionLayouts, made on the host by the collator, never the grids on the GPU."""
    return {key: (None if value is None else
                  value.to(device) if isinstance(value, (PackingContext, VisionLayout)) else host_to_device(value, device))
            for key, value in batch.items() if key in MODEL_INPUTS}


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
    has_mtp = getattr(model, "mtp", None) is not None
    num_items, num_mtp_items, vision_calls = _step_totals(micro_batches, world.device, count_mtp_targets=has_mtp,
                                                          world_size=world.world_size)
    mtp_kwargs = {"num_mtp_items_in_batch": num_mtp_items.clamp_min(1)} if has_mtp else {}
    num_items = num_items.clamp_min(1)
    lr = scheduler.get_last_lr()[0]
    step_losses = torch.zeros(2, dtype=torch.float32, device=world.device)  # next-token, MTP
    tokens = 0
    for micro_batch, calls in zip(micro_batches, vision_calls):
        # Only when sharded: the vision collectives of the ranks must match (see the module docstring).
        idle_vision = calls - _vision_calls(micro_batch) if world.is_distributed else 0
        out = model(**to_device(micro_batch, world.device), num_items_in_batch=num_items, idle_vision=idle_vision, **mtp_kwargs)
        if on_phase is not None:
            on_phase("backward")
        out.training_loss.backward()
        step_losses[0] += out.loss.detach().float()
        if out.mtp_loss is not None:
            step_losses[1] += out.mtp_loss.detach().float()
        tokens += micro_batch["input_ids"].numel()
    if world.is_distributed:
        reduce_replicated_gradients(model)
    grad_norm = float(_grad_norm(model, grad_clip))
    loss, mtp_loss = all_reduce_sum(step_losses).tolist()
    if not math.isfinite(loss):
        raise NonFiniteStep("loss", loss)
    if has_mtp and not math.isfinite(mtp_loss):
        raise NonFiniteStep("MTP loss", mtp_loss)
    if not math.isfinite(grad_norm):
        raise NonFiniteStep("gradient norm", grad_norm)
    if on_phase is not None:
        on_phase("optimizer")
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(loss=loss, grad_norm=grad_norm, lr=lr, tokens=tokens, mtp_loss=mtp_loss if has_mtp else None)


def _step_totals(
    micro_batches: list[dict[str, Any]], device: torch.device, *, count_mtp_targets: bool, world_size: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """One all-reduce per step: the next-token targets and (`count_mtp_targets`) the MTP targets of
    the whole step (every micro-batch on every rank, [] int64 tensors; 0 when not counted), and for
    each micro-batch index the vision-tower calls every rank makes: one if any rank's has an image,
    plus one if any rank's has a video (images and videos are one tower call each)."""
    local = [sum(int((mb["shift_labels"] != IGNORE_INDEX).sum()) for mb in micro_batches)]
    local.append(sum(int((next_next_token_labels(mb["shift_labels"], mb["packing"].seq_idx) != IGNORE_INDEX).sum())
                     for mb in micro_batches) if count_mtp_targets else 0)
    local += [int(mb.get(key) is not None) for mb in micro_batches for key in ("pixel_values", "pixel_values_videos")]
    # Counted on the host (the collator's rows are host tensors): with one rank there is nothing to
    # sum, and a round trip through the GPU would wait for it to finish the previous step.
    totals = local if world_size == 1 else all_reduce_sum(torch.tensor(local, dtype=torch.int64, device=device)).tolist()
    as_tensor = lambda count: host_to_device(torch.tensor(count, dtype=torch.int64), device)  # noqa: E731
    calls = [int(images > 0) + int(videos > 0) for images, videos in zip(totals[2::2], totals[3::2])]
    return as_tensor(totals[0]), as_tensor(totals[1]), calls


def _vision_calls(micro_batch: dict[str, Any]) -> int:
    """The vision-tower calls of this micro-batch's own forward: one for its images, one for its videos."""
    return int(micro_batch.get("pixel_values") is not None) + int(micro_batch.get("pixel_values_videos") is not None)


def _grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The global gradient norm (clipped to `max_norm` when > 0), a plain tensor also under FSDP2.

    Under FSDP2 the sharded gradients are DTensors and those of the replicated parameters (the
    fp32-kept ones, assembler.parallel.parallelize) plain tensors; torch's foreach kernels take one kind per
    call, so each kind is normed apart and the two norms combined, as clip_grad_norm_ combines its
    per-device norms.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    whole = [g for g in grads if not isinstance(g, DTensor)]
    norms = [torch.nn.utils.get_total_norm(sharded, foreach=True).full_tensor()] if sharded else []
    norms += [torch.nn.utils.get_total_norm(whole, foreach=True)] if whole else []
    if not norms:
        return torch.zeros(())
    total = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
    if max_norm > 0:
        scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # clip_grads_with_norm_'s coefficient
        for kind in ([g.to_local() for g in sharded], whole):
            for device in {g.device for g in kind}:
                torch._foreach_mul_([g for g in kind if g.device == device], scale.to(device))
    return total
