"""The optimizer and learning-rate schedule of `train:` — AdamW with warmup then cosine/linear decay.

The schedule is a `LambdaLR` so its whole state is one integer (`last_epoch`), which checkpoints
and resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from assembler.parallel.parallelize import replicated_parameters
from assembler.spec.sections import OptimizerSettings, ScheduleSettings

SCHEDULES = ("cosine", "linear", "constant")


def build_optimizer(model: nn.Module, optimizer_spec: Mapping[str, Any]) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters; fused where supported (see `_fused_supported`).

    `optimizer_spec`: `train.optimizer` (missing settings take the schema's defaults). Weight
    decay applies to matrices only: decaying norm gains, biases and the DeltaNet's A_log /
    dt_bias would pull them away from their meaningful centres.
    """
    settings = OptimizerSettings.of(optimizer_spec)
    if settings.name != "adamw":
        raise ValueError(f"train.optimizer.name: unknown optimizer {settings.name!r}; known: adamw")
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() de-duplicates tied weights
    # Under FSDP2 the parameters it replicates (assembler.parallel.parallelize: the fp32-kept ones) are plain
    # tensors among DTensors; the fused and foreach kernels take one kind per call, so they get
    # groups of their own (none without FSDP, where every parameter is a plain tensor).
    replicated = {id(p) for p in replicated_parameters(model)}
    sharded = [p for p in params if id(p) not in replicated]
    groups = _decay_groups(sharded, settings.weight_decay)
    groups += [group for group in _decay_groups([p for p in params if id(p) in replicated], settings.weight_decay) if group["params"]]
    return torch.optim.AdamW(
        groups,
        lr=float(settings.lr),
        betas=(float(settings.betas[0]), float(settings.betas[1])),
        eps=float(settings.eps),
        fused=_fused_supported(params),
    )


def _decay_groups(params: list[torch.Tensor], weight_decay: float) -> list[dict[str, Any]]:
    """Matrices with weight decay, the rest (norm gains, biases, A_log, dt_bias) without."""
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": float(weight_decay)},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def _fused_supported(params: list[torch.Tensor]) -> bool | None:
    """Fused AdamW on CUDA, and on CPU for plain tensors (half the update time of the per-tensor
    loop there; the tiny spec's 16M-entry embedding makes that matter). Sharded (DTensor) CPU
    parameters keep the default implementation."""
    if not params:
        return None
    devices = {p.device.type for p in params}
    if devices == {"cuda"}:
        return True
    from torch.distributed.tensor import DTensor

    is_dtensor = any(isinstance(p, DTensor) for p in params)
    return True if devices == {"cpu"} and not is_dtensor else None


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, name: str, min_lr_ratio: float) -> float:
    """The factor on the peak lr for optimizer step `step` (0-based: the first update uses step 0).

    Linear warmup from lr/warmup to lr over `warmup_steps`, then decay to `min_lr_ratio`·lr at the
    last step (cosine or linear), or stay at lr (constant).
    """
    if name not in SCHEDULES:
        raise ValueError(f"train.schedule.name: unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    decay_steps = max(total_steps - warmup_steps - 1, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    if name == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def build_lr_schedule(optimizer: torch.optim.Optimizer, schedule_spec: Mapping[str, Any], total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping once per optimizer step, following `train.schedule`."""
    settings = ScheduleSettings.of(schedule_spec)  # missing settings: the schema's defaults
    warmup_steps, name, min_lr_ratio = int(settings.warmup_steps), settings.name, float(settings.min_lr_ratio)
    lr_multiplier(0, total_steps=total_steps, warmup_steps=warmup_steps, name=name, min_lr_ratio=min_lr_ratio)  # validate now

    def multiplier(step: int) -> float:
        return lr_multiplier(step, total_steps=total_steps, warmup_steps=warmup_steps, name=name, min_lr_ratio=min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
