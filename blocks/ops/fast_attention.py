"""`fast` attention: FlashAttention varlen over the flattened tokens, one attention per document.

The flash-attn package when it is importable, else PyTorch's own FlashAttention kernel behind
`torch.nn.attention.varlen.varlen_attn` (a custom op with its own fake implementation and
backward, so a compiled layer keeps one graph). Text layers run causal, vision blocks non-causal;
`ctx.cu_seqlens` keeps every document (image) to itself. GQA runs natively where the kernel takes
fewer key/value heads than query heads; on torch 2.11, whose `varlen_attn` has no `enable_gqa`, the
key/value heads are repeated first (kv head h serves query heads h·G .. h·G + G - 1).

When every row is one document (an unpacked batch, the benchmark's one sequence per step), there is
no boundary to keep and PyTorch's `scaled_dot_product_attention` runs instead: it picks cuDNN's or
FlashAttention's fused kernel and takes GQA natively, which on an H200 at Qwen3.5-4B's shapes was
faster than the varlen kernel fed repeated key/value heads (BENCHMARKS.md).
"""

from __future__ import annotations

import importlib.util
import inspect

import torch

from blocks.packing import PackingContext

CAUSAL_WINDOW = (-1, 0)  # varlen_attn's spelling of causal: no limit to the left, none to the right
FULL_WINDOW = (-1, -1)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool, ctx: PackingContext
) -> torch.Tensor:
    """Softmax attention inside each document of `ctx`.

    q: [B, T, Hq, D], k/v: [B, T, Hkv, D] (Hq a multiple of Hkv) -> [B, T, Hq, D] in q's dtype.
    """
    batch, seq_len, num_heads, head_dim = q.shape
    num_key_value_heads = k.shape[2]
    if num_key_value_heads == 0 or num_heads % num_key_value_heads:
        raise ValueError(f"attention: {num_heads} query heads is not a multiple of {num_key_value_heads} key/value heads")
    if ctx.num_documents == batch and _flash_attn_varlen is None:  # documents never span rows: one per row
        return _dense_attention(q, k, v, scale=scale, causal=causal)
    q = q.reshape(batch * seq_len, num_heads, head_dim)
    k = k.reshape(batch * seq_len, num_key_value_heads, head_dim)
    v = v.reshape(batch * seq_len, num_key_value_heads, head_dim)
    cu_seqlens, max_seqlen = ctx.cu_seqlens, ctx.max_seqlen
    if _flash_attn_varlen is not None:
        out = _flash_attn_varlen(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale=scale, causal=causal
        )
    else:
        from torch.nn.attention.varlen import varlen_attn

        extra = {}
        if num_key_value_heads != num_heads:
            if _VARLEN_HAS_GQA:
                extra["enable_gqa"] = True
            else:
                groups = num_heads // num_key_value_heads
                k = k.repeat_interleave(groups, dim=1)
                v = v.repeat_interleave(groups, dim=1)
        out = varlen_attn(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
            scale=scale, window_size=CAUSAL_WINDOW if causal else FULL_WINDOW, **extra,
        )
    return out.reshape(batch, seq_len, num_heads, head_dim)


def _dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool) -> torch.Tensor:
    """Attention over whole rows. q: [B, T, Hq, D], k/v: [B, T, Hkv, D] -> [B, T, Hq, D]."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        is_causal=causal, scale=scale, enable_gqa=k.shape[2] != q.shape[2],
    )
    return out.transpose(1, 2)


def _load_flash_attn_varlen():  # noqa: ANN202
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func


def _varlen_has_gqa() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return False
    return "enable_gqa" in inspect.signature(varlen_attn).parameters


_flash_attn_varlen = _load_flash_attn_varlen()
_VARLEN_HAS_GQA = _varlen_has_gqa()


def kernel() -> str:
    """What this op runs on this machine, for OpTable.backends (chosen here, at import and per call)."""
    if _flash_attn_varlen is not None:
        return "flash-attn varlen, native GQA"
    gqa = "native GQA" if _VARLEN_HAS_GQA else "key/value heads repeated for GQA"
    return f"torch varlen_attn (FlashAttention), {gqa}; one document per row: scaled_dot_product_attention (cuDNN/FlashAttention)"
