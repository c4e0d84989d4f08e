"""`fast` RMS norms: one fused kernel per norm, forward and backward.

Eager: fla's fused Triton kernels (RMSNorm; RMSNorm gated by silu(gate)). Inside a
`torch.compile`d block: the plain PyTorch formula of the `hf` op, which Inductor turns into one
fused kernel too and can also fuse with its neighbours (the residual add before a layer norm, the
gate's sigmoid around the attention output), which an opaque kernel would prevent. Both compute in
fp32 and cast back; neither changes what the op means (see `blocks.ops` for the contract).
"""

from __future__ import annotations

import torch

from blocks.ops import hf_norms


def rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float, zero_centered: bool) -> torch.Tensor:
    """RMS norm over the last dim. x: [..., N], weight: [N] -> [..., N] in x's dtype.

    zero_centered: x̂·(1 + w), with 1 + w formed in fp32 (a bf16 1 + w would round w away).
    """
    if torch.compiler.is_compiling() or not x.is_cuda:
        return hf_norms.rms_norm(x, weight, eps=eps, zero_centered=zero_centered)
    from fla.modules.norm.layernorm import rms_norm as fla_rms_norm

    scale = 1.0 + weight.float() if zero_centered else weight
    shape = x.shape
    return fla_rms_norm(x.reshape(-1, shape[-1]), scale, None, eps=eps).view(shape)


def gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, *, eps: float) -> torch.Tensor:
    """x̂·w·silu(gate). x, gate: [..., N], weight: [N] -> [..., N] in x's dtype."""
    if torch.compiler.is_compiling() or not x.is_cuda:
        return hf_norms.gated_rms_norm(x, gate, weight, eps=eps)
    from fla.modules.norm.fused_norm_gate import rms_norm_gated

    shape = x.shape
    out = rms_norm_gated(x.reshape(-1, shape[-1]), gate.reshape(-1, shape[-1]), weight, None, activation="swish", eps=eps)
    return out.view(shape)


def kernel() -> str:
    """What these ops run, for OpTable.backends (chosen per call: compiled or not, CUDA or not)."""
    return "fla fused Triton kernels eagerly; torch math inside a compiled layer (Inductor fuses it); torch math off CUDA"
