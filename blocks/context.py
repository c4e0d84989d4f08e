"""The read-only per-forward context the text tower hands to every decoder layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from blocks.packing import PackingContext


@dataclass(frozen=True)
class TextContext:
    """Computed once per forward by the text tower; layers read it and never write to it.

    packing: document layout of the [B, T] batch.
    rotary:  (cos, sin), each [B, T, rotary_dim] in the activation dtype, from the mRoPE
             positions in `packing.position_ids` (only the full-attention layers read it).
    """

    packing: PackingContext
    rotary: tuple[torch.Tensor, torch.Tensor]
