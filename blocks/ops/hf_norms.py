"""`hf` RMS norms: transformers' Qwen3.5 norms, op for op (so bitwise equal to them).

The order of casts is the whole point of these functions; each one names the transformers class it
reproduces. Do not "simplify" a cast away: it changes bf16 results.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float, zero_centered: bool) -> torch.Tensor:
    """RMS norm over the last dim. x: [..., N], weight: [N] -> [..., N] in x's dtype.

    zero_centered: transformers' `Qwen3_5RMSNorm`: x̂ = x·rsqrt(mean(x²) + eps) in fp32, times
        (1 + w) in fp32, then cast to x's dtype ((x̂·w).to(dtype), not x̂.to(dtype)·w).
    default: the usual Qwen3/Llama `RMSNorm`: x̂ in fp32, cast to x's dtype, then times w
        (then cast to x's dtype, which is a no-op when w has x's dtype, as in the reference).
    """
    if zero_centered:
        x_float = x.float()
        normed = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + eps)
        return (normed * (1.0 + weight.float())).type_as(x)
    input_dtype = x.dtype
    x_float = x.to(torch.float32)
    variance = x_float.pow(2).mean(-1, keepdim=True)
    normed = x_float * torch.rsqrt(variance + eps)
    return (weight * normed.to(input_dtype)).to(input_dtype)


def gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, *, eps: float) -> torch.Tensor:
    """x̂·w·silu(gate), transformers' `Qwen3_5RMSNormGated`. x, gate: [..., N], weight: [N] -> [..., N] in x's dtype.

    Norm first (fp32, cast back to x's dtype), then times w (which may stay fp32 under mixed
    precision: the product then promotes to fp32), then times silu(gate) computed in fp32.
    """
    input_dtype = x.dtype
    x_float = x.to(torch.float32)
    variance = x_float.pow(2).mean(-1, keepdim=True)
    normed = x_float * torch.rsqrt(variance + eps)
    out = weight * normed.to(input_dtype)
    out = out * F.silu(gate.to(torch.float32))
    return out.to(input_dtype)


def kernel() -> str:
    """What these ops run, for OpTable.backends."""
    return "transformers' Qwen3.5 norms, op for op"
