"""Gated DeltaNet: Qwen3.5's linear-attention token mixer (transformers' `Qwen3_5GatedDeltaNet`).

Per token: project to q, k, v (through one depthwise causal conv + silu), a gate z, a write
strength β = sigmoid(b) and a log decay g = -exp(A_log) · softplus(a + dt_bias); run the gated
delta rule per value head; normalise its output with an RMSNorm gated by silu(z); project back.
Parameter names are the HF checkpoint's (`model.language_model.layers.N.linear_attn.*`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from blocks.context import TextContext
from blocks.ops import OpTable
from blocks.registry import register
from blocks.settings import SettingProblem, divisors

GATE_NORM_TYPES = ("default", "zero_centered")


class GatedRMSNorm(nn.Module):
    """x̂ · w · silu(gate) over the last dim (N), applied per value head: x, gate [..., N] -> [..., N].

    `zero_centered` stores w - 1 (x̂ · (1 + w), initialised at 0). Qwen3.5 uses the default form.
    """

    def __init__(self, hidden_size: int, *, eps: float, zero_centered: bool, ops: OpTable) -> None:
        super().__init__()
        self.zero_centered = zero_centered
        self.weight = nn.Parameter(torch.zeros(hidden_size) if zero_centered else torch.ones(hidden_size))
        self.eps = eps
        self.ops = ops

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight) if self.zero_centered else nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        # The gated_rms_norm op only knows x̂·w·silu(gate); the zero-centered form is that op with
        # w := 1 + w (no HF reference to be bitwise with for this form).
        weight = 1.0 + self.weight if self.zero_centered else self.weight
        return self.ops.gated_rms_norm(x, gate, weight, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}, zero_centered={self.zero_centered}"


@register("mixer", "gated_deltanet")
class GatedDeltaNet(nn.Module):
    """hidden [B, T, H] -> [B, T, H]. Heads: Hk key/query heads of Dk, Hv value heads of Dv,
    each key head shared by Hv / Hk consecutive value heads."""

    hf_attribute = "linear_attn"  # the decoder layer's attribute name in the HF checkpoint
    # Constructor keywords filled from the text tower's settings (see GatedAttention.tower_settings).
    tower_settings = {"gate_norm_type": "norms.deltanet_gate", "rms_norm_eps": "rms_norm_eps"}

    # The JSON Schema of this block's spec section (the assembler adds `block` and closes it).
    settings_schema = {
        "description": "Gated DeltaNet (linear attention): the delta rule with a decay gate, causal conv1d over q, k, v, "
                       "a gated RMSNorm.",
        "properties": {
            "num_key_heads": {"type": "integer", "description": "Number of query/key heads.", "minimum": 1, "maximum": 1024},
            "num_value_heads": {"type": "integer", "description": "Number of value heads; a multiple of num_key_heads.",
                                "minimum": 1, "maximum": 1024},
            "key_head_dim": {"type": "integer", "description": "Dimension of one query/key head.", "minimum": 1, "maximum": 1024},
            "value_head_dim": {"type": "integer", "description": "Dimension of one value head.", "minimum": 1, "maximum": 1024},
            "conv_kernel_dim": {"type": "integer", "description": "Kernel size of the causal depthwise conv1d over q, k, v.",
                                 "minimum": 1, "maximum": 64, "default": 4},
        },
        "required": ["num_key_heads", "num_value_heads", "key_head_dim", "value_head_dim"],
    }

    @staticmethod
    def flops_per_token(settings: dict, hidden_size: int, seq_len: int) -> float:
        """Training FLOPs per token beyond 6·N of the projections and the conv1d: none counted. The
        delta-rule kernel's work is left out, so MFU errs low (ARCHITECTURE.md, Measuring)."""
        return 0.0

    @staticmethod
    def settings_problems(settings: dict) -> Iterator[SettingProblem]:
        """Every key head serves a whole group of value heads."""
        key_heads, value_heads = settings["num_key_heads"], settings["num_value_heads"]
        if value_heads % key_heads:
            yield SettingProblem(
                "num_value_heads", f"{value_heads} is not a multiple of num_key_heads {key_heads}",
                "each key head serves a whole group of value heads: set num_value_heads to a multiple of "
                f"num_key_heads, or num_key_heads to a divisor of num_value_heads ({divisors(value_heads)})",
                value_heads, f"a multiple of {key_heads}")

    def __init__(
        self,
        *,
        hidden_size: int,
        num_key_heads: int,
        num_value_heads: int,
        key_head_dim: int,
        value_head_dim: int,
        conv_kernel_dim: int,
        gate_norm_type: str,
        rms_norm_eps: float,
        ops: OpTable,
    ) -> None:
        super().__init__()
        for problem in self.settings_problems({"num_key_heads": num_key_heads, "num_value_heads": num_value_heads}):
            raise ValueError(f"gated_deltanet: {problem.key} {problem.message}; {problem.hint}")
        if gate_norm_type not in GATE_NORM_TYPES:
            raise ValueError(f"gated_deltanet: gate_norm_type {gate_norm_type!r} is not one of {GATE_NORM_TYPES}")
        self.num_key_heads = num_key_heads
        self.num_value_heads = num_value_heads
        self.head_k_dim = key_head_dim
        self.head_v_dim = value_head_dim
        self.key_dim = num_key_heads * key_head_dim
        self.value_dim = num_value_heads * value_head_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.ops = ops

        # Registered in transformers' order, so state_dict() lists the parameters as HF does.
        # An nn.Conv1d only so the parameter is HF's `conv1d.weight` [C, 1, K]; ops.conv1d runs it.
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, conv_kernel_dim, groups=self.conv_dim, padding=conv_kernel_dim - 1, bias=False
        )
        self.dt_bias = nn.Parameter(torch.ones(num_value_heads))
        # U(0.01, 16): bounded away from 0 so A_log is never -inf.
        self.A_log = nn.Parameter(torch.empty(num_value_heads).uniform_(0.01, 16).log())
        self.norm = GatedRMSNorm(value_head_dim, eps=rms_norm_eps, zero_centered=gate_norm_type == "zero_centered", ops=ops)
        self.out_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        self.in_proj_qkv = nn.Linear(hidden_size, self.conv_dim, bias=False)
        self.in_proj_z = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.in_proj_b = nn.Linear(hidden_size, num_value_heads, bias=False)
        self.in_proj_a = nn.Linear(hidden_size, num_value_heads, bias=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Its own parameters as transformers initialises them: dt_bias 1, A_log = log U(0.01, 16)
        (bounded away from 0 so A_log is never -inf); its Linear / conv children are the
        assembler's (normal init by tower)."""
        self.dt_bias.fill_(1.0)
        self.A_log.copy_(torch.empty_like(self.A_log, dtype=torch.float32).uniform_(0.01, 16).log_())

    def forward(self, hidden_states: torch.Tensor, ctx: TextContext) -> torch.Tensor:
        batch, seq_len, _ = hidden_states.shape
        # The projections run in the reference's order: the input's gradient is their sum, and
        # autograd adds it up in that order, so changing it changes the last bits.
        mixed_qkv = self.in_proj_qkv(hidden_states)
        z = self.in_proj_z(hidden_states).reshape(batch, seq_len, -1, self.head_v_dim)
        b = self.in_proj_b(hidden_states)
        a = self.in_proj_a(hidden_states)

        mixed_qkv = self.ops.conv1d(mixed_qkv, self.conv1d.weight.squeeze(1), ctx=ctx.packing)
        query, key, value = torch.split(mixed_qkv, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        query = query.reshape(batch, seq_len, -1, self.head_k_dim)
        key = key.reshape(batch, seq_len, -1, self.head_k_dim)
        value = value.reshape(batch, seq_len, -1, self.head_v_dim)

        beta = b.sigmoid()
        # In fp32 even for low-precision a: exp(A_log) overflows fp16.
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)
        core = self.ops.delta_rule(query, key, value, g, beta, ctx=ctx.packing)  # [B, T, Hv, Dv]

        core = self.norm(core.reshape(-1, self.head_v_dim), z.reshape(-1, self.head_v_dim))
        return self.out_proj(core.reshape(batch, seq_len, -1))
