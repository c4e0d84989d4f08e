"""RMSNorm block: x̂·w (`default`) or x̂·(1+w) (`zero_centered`, Qwen3.5's), computed by the op table."""

from __future__ import annotations

import torch
from torch import nn

from blocks.ops import OpTable
from blocks.registry import register


@register("norm", "rms_norm")
class RMSNorm(nn.Module):
    """RMS norm over the last dim. [..., dim] -> [..., dim] in the input's dtype.

    zero_centered: the weight stores w - 1, so it starts at zeros (the HF Qwen3.5 checkpoints store
    it this way: `Qwen3_5RMSNorm`); otherwise the weight is w itself and starts at ones.
    """

    def __init__(self, dim: int, *, eps: float, zero_centered: bool, ops: OpTable) -> None:
        super().__init__()
        self.eps = eps
        self.zero_centered = zero_centered
        self.ops = ops
        self.weight = nn.Parameter(torch.zeros(dim) if zero_centered else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, eps=self.eps, zero_centered=self.zero_centered)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight) if self.zero_centered else nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}, zero_centered={self.zero_centered}"
