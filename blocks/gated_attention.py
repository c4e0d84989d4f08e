"""Gated full attention (Qwen3.5's `self_attn`): GQA with per-head q/k RMS norm, partial mRoPE and a
sigmoid output gate emitted by q_proj alongside the queries."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from blocks.context import TextContext
from blocks.norms import RMSNorm
from blocks.ops import OpTable
from blocks.registry import register
from blocks.settings import SettingProblem, divisors
from blocks.rope import apply_rotary

QK_NORM_TYPES = ("default", "zero_centered")


@register("mixer", "gated_attention")
class GatedAttention(nn.Module):
    """[B, T, H] -> [B, T, H], causal inside each document of the packing context.

    Op for op transformers' `Qwen3_5Attention` (eager): q_proj emits, per head, the head's query
    followed by its gate ([q_h | g_h] for h = 0..Hq-1, so the checkpoint's weight loads unchanged);
    q and k go through an RMS norm over the head dim, then rotary, then attention, then
    out·sigmoid(gate) and o_proj. Projections run in the reference's order (q, k, v): the input's
    gradient is their sum, and autograd adds it up in that order.
    """

    hf_attribute = "self_attn"  # the decoder layer's attribute name in the HF checkpoint
    # Constructor keywords filled from the text tower's settings (dotted paths under model.text),
    # besides `hidden_size` and `ops`, which every text block gets.
    tower_settings = {"qk_norm_type": "norms.qk", "rms_norm_eps": "rms_norm_eps"}

    # The JSON Schema of this block's spec section (the assembler adds `block` and closes it).
    settings_schema = {
        "description": "Gated softmax attention with grouped key/value heads, optional q/k RMSNorm and sigmoid "
                       "output gate; (m)RoPE on part of each head.",
        "properties": {
            "num_attention_heads": {"type": "integer", "description": "Number of query heads.", "minimum": 1, "maximum": 1024},
            "num_key_value_heads": {"type": "integer", "description": "Number of key/value heads; must divide num_attention_heads.", "minimum": 1,
                                    "maximum": 1024},
            "head_dim": {"type": "integer", "description": "Dimension of one attention head.", "minimum": 1, "maximum": 1024},
            "qk_norm": {"type": "boolean", "description": "RMSNorm on queries and keys per head (q_norm, k_norm).",
                        "default": True},
            "output_gate": {"type": "boolean",
                            "description": "Sigmoid output gate computed from the input (q_proj produces query and gate).",
                            "default": True},
        },
        "required": ["num_attention_heads", "num_key_value_heads", "head_dim"],
    }

    @staticmethod
    def flops_per_token(settings: dict, hidden_size: int, seq_len: int) -> float:
        """Training FLOPs per token beyond 6·N of the projections: the score (q·k) and weighted-sum
        (p·v) matmuls, 2·2·Hq·D·S forward, three times that forward + backward = 12·Hq·D·S
        (torchtitan's convention: the full S×S square, the causal mask's saving not deducted)."""
        return float(12 * settings["num_attention_heads"] * settings["head_dim"] * seq_len)

    @staticmethod
    def settings_problems(settings: dict) -> Iterator[SettingProblem]:
        """Grouped-query attention: every key/value head serves a whole group of query heads."""
        heads, kv_heads = settings["num_attention_heads"], settings["num_key_value_heads"]
        if heads % kv_heads:
            yield SettingProblem("num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads}",
                                 f"set num_key_value_heads to a divisor of num_attention_heads ({divisors(heads)})", kv_heads, f"a divisor of {heads}")

    def __init__(
        self,
        *,
        hidden_size: int,
        num_attention_heads: int,
        num_key_value_heads: int,
        head_dim: int,
        qk_norm: bool,
        output_gate: bool,
        qk_norm_type: str,
        rms_norm_eps: float,
        ops: OpTable,
    ) -> None:
        super().__init__()
        for problem in self.settings_problems({"num_attention_heads": num_attention_heads, "num_key_value_heads": num_key_value_heads}):
            raise ValueError(f"gated_attention: {problem.key} {problem.message}; {problem.hint}")
        if qk_norm_type not in QK_NORM_TYPES:
            raise ValueError(f"gated_attention: qk_norm_type {qk_norm_type!r} is not one of {', '.join(QK_NORM_TYPES)}")
        self.num_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.output_gate = output_gate
        self.scaling = head_dim**-0.5
        self.ops = ops
        query_width = num_attention_heads * head_dim * (2 if output_gate else 1)
        self.q_proj = nn.Linear(hidden_size, query_width, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_key_value_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_key_value_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_attention_heads * head_dim, hidden_size, bias=False)
        if qk_norm:
            zero_centered = qk_norm_type == "zero_centered"
            self.q_norm = RMSNorm(head_dim, eps=rms_norm_eps, zero_centered=zero_centered, ops=ops)
            self.k_norm = RMSNorm(head_dim, eps=rms_norm_eps, zero_centered=zero_centered, ops=ops)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, hidden_states: torch.Tensor, ctx: TextContext) -> torch.Tensor:
        """hidden_states [B, T, H] -> [B, T, H]; reads ctx.rotary (cos, sin) and ctx.packing."""
        input_shape = hidden_states.shape[:-1]
        head_shape = (*input_shape, -1, self.head_dim)

        if self.output_gate:
            query, gate = torch.chunk(self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim * 2), 2, dim=-1)
            gate = gate.reshape(*input_shape, -1)
        else:
            query, gate = self.q_proj(hidden_states), None
        # Rotary in the [B, H, T, D] layout, as the reference: the attention op gets transposed views
        # of these tensors, so its matmuls see the reference's strides (bitwise parity needs that).
        query = self._maybe_norm(self.q_norm, query.view(head_shape)).transpose(1, 2)
        key = self._maybe_norm(self.k_norm, self.k_proj(hidden_states).view(head_shape)).transpose(1, 2)
        value = self.v_proj(hidden_states).view(head_shape).transpose(1, 2)

        cos, sin = ctx.rotary
        query, key = apply_rotary(query, key, cos, sin)

        out = self.ops.attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
            scale=self.scaling, causal=True, ctx=ctx.packing,
        )  # [B, T, Hq, D]
        out = out.reshape(*input_shape, -1).contiguous()
        if gate is not None:
            out = out * torch.sigmoid(gate)
        return self.o_proj(out)

    @staticmethod
    def _maybe_norm(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        return x if norm is None else norm(x)
