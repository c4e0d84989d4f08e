"""One pre-norm transformer block of the vision tower (HF `model.visual.blocks.N`).

    x = x + attn.proj(attention(rope(attn.qkv(norm1(x)))))     # bidirectional, per frame
    x = x + mlp.linear_fc2(act(mlp.linear_fc1(norm2(x))))

Patches of all images are packed into one sequence [N, hidden]; the packing context keeps each
frame's attention to itself.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from blocks.ops import OpTable
from blocks.packing import PackingContext
from blocks.vision_rope import apply_vision_rotary

LAYER_NORM_EPS = 1e-6

# Activation names as in HF configs (`hidden_act`).
VISION_ACTIVATIONS = {
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
    "gelu": F.gelu,
}


class VisionAttention(nn.Module):
    """Bidirectional multi-head attention with 2-D rotary q/k; fused `qkv`, output `proj`, both biased."""

    def __init__(self, *, hidden_size: int, num_heads: int, ops: OpTable):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"vision attention: hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.qkv = nn.Linear(hidden_size, hidden_size * 3, bias=True)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.ops = ops

    def forward(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], ctx: PackingContext
    ) -> torch.Tensor:
        """hidden_states [N, hidden], cos/sin [N, head_dim] -> [N, hidden]."""
        seq_length = hidden_states.shape[0]
        q, k, v = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        q, k = apply_vision_rotary(q, k, cos, sin)
        attn_output = self.ops.attention(
            q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), scale=self.scaling, causal=False, ctx=ctx
        )  # [1, N, H, D]
        return self.proj(attn_output.reshape(seq_length, -1).contiguous())


class VisionMLP(nn.Module):
    """linear_fc2(act(linear_fc1(x))), both biased."""

    def __init__(self, *, hidden_size: int, intermediate_size: int, activation: str):
        super().__init__()
        if activation not in VISION_ACTIVATIONS:
            raise ValueError(
                f"vision mlp: unknown activation {activation!r}; known: {', '.join(sorted(VISION_ACTIVATIONS))}"
            )
        self.linear_fc1 = nn.Linear(hidden_size, intermediate_size, bias=True)
        self.linear_fc2 = nn.Linear(intermediate_size, hidden_size, bias=True)
        self.act_fn = VISION_ACTIVATIONS[activation]

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(self.act_fn(self.linear_fc1(hidden_state)))


class VisionBlock(nn.Module):
    """norm1 -> attn -> residual, norm2 -> mlp -> residual; the unit that is compiled/sharded/checkpointed."""

    def __init__(self, *, hidden_size: int, num_heads: int, intermediate_size: int, activation: str, ops: OpTable):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.attn = VisionAttention(hidden_size=hidden_size, num_heads=num_heads, ops=ops)
        self.mlp = VisionMLP(hidden_size=hidden_size, intermediate_size=intermediate_size, activation=activation)

    def forward(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], ctx: PackingContext
    ) -> torch.Tensor:
        """hidden_states [N, hidden] -> [N, hidden]."""
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states), position_embeddings, ctx)
        hidden_states = hidden_states + self.mlp(self.norm2(hidden_states))
        return hidden_states
