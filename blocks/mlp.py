"""SwiGLU feed-forward (Qwen3.5's `mlp`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blocks.ops import OpTable
from blocks.registry import register


@register("mlp", "swiglu")
class SwiGLU(nn.Module):
    """down_proj(silu(gate_proj(x)) · up_proj(x)). [..., H] -> [..., H]; transformers' `Qwen3_5MLP`."""

    # The JSON Schema of this block's spec section (the assembler adds `block` and closes it).
    settings_schema = {
        "description": "SwiGLU feed-forward: down(silu(gate(x)) * up(x)).",
        "properties": {
            "intermediate_size": {"type": "integer", "description": "Hidden width of the MLP.", "minimum": 1,
                                  "maximum": 1048576},
        },
        "required": ["intermediate_size"],
    }

    @staticmethod
    def flops_per_token(settings: dict, hidden_size: int, seq_len: int) -> float:
        """Training FLOPs per token beyond 6·N of its three projections: none (all its work is theirs)."""
        return 0.0

    def __init__(self, *, hidden_size: int, intermediate_size: int, ops: OpTable) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
