"""`hf` attention: transformers' `eager_attention_forward` (Qwen3.5), run per document.

Bitwise contract: for a batch whose rows each hold one document, the causal result equals
transformers' eager attention with the mask `create_causal_mask` builds for eager with no padding
(0 on and below the diagonal, `finfo(dtype).min` above, in the activation dtype). Non-causal runs
match the vision tower's eager path, which splits the packed patches per image with no mask.
Packed rows are cut into their documents, so no attention crosses a boundary.

Under `torch.compile` the cut is not traceable: it reads document bounds back to the host
(`cu_seqlens.tolist()`), data-dependent sizes that a fullgraph block cannot guard on. A compiled
call instead runs the whole row at once with a block-diagonal (and causal) mask from `seq_idx`:
the same attention, with no host sync, but not bitwise the per-document sums (softmax and matmul
reduce over the whole row, the masked terms being exact zeros).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blocks.packing import PackingContext


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    causal: bool,
    ctx: PackingContext,
) -> torch.Tensor:
    """Softmax attention inside each document of `ctx`.

    q: [B, T, Hq, D], k/v: [B, T, Hkv, D] (Hq a multiple of Hkv) -> [B, T, Hq, D] in q's dtype.
    The math runs in transformers' [B, H, T, D] layout; passing `x_bhtd.transpose(1, 2)` views (as
    the blocks do) keeps the strides transformers' matmuls see, which bitwise parity relies on.
    """
    batch, seq_len, num_heads, head_dim = q.shape
    if k.shape[2] == 0 or num_heads % k.shape[2] != 0:
        raise ValueError(f"attention: {num_heads} query heads is not a multiple of {k.shape[2]} key/value heads")
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D] views
    if torch.compiler.is_compiling():
        out = _eager_attention(q, k, v, scale=scale, causal=False, mask=_document_mask(ctx.seq_idx, causal, q.dtype))
        return out.transpose(1, 2).contiguous()
    bounds = ctx.cu_seqlens.tolist()
    if bounds[-1] != batch * seq_len:
        raise ValueError(
            f"attention: the packing context covers {bounds[-1]} tokens but q holds {batch}x{seq_len}; "
            "build the context for this batch's shape"
        )

    if len(bounds) - 1 == batch and all(bounds[row] == row * seq_len for row in range(batch)):
        # One document per row: the whole batch at once, exactly transformers' unpacked call.
        out = _eager_attention(q, k, v, scale=scale, causal=causal)
        return out.transpose(1, 2).contiguous()

    out = q.new_empty(batch, seq_len, num_heads, head_dim)
    for start, end in zip(bounds[:-1], bounds[1:]):
        row, begin = divmod(start, seq_len)
        stop = begin + (end - start)
        if stop > seq_len:
            raise ValueError(f"attention: document [{start}, {end}) spans two rows of length {seq_len}")
        piece = slice(begin, stop)
        doc = _eager_attention(
            q[row : row + 1, :, piece], k[row : row + 1, :, piece], v[row : row + 1, :, piece],
            scale=scale, causal=causal,
        )
        out[row, piece] = doc[0].transpose(0, 1)
    return out


def _eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """transformers' `eager_attention_forward` without dropout. q: [B, Hq, T, D], k/v: [B, Hkv, T, D] -> [B, Hq, T, D].

    mask: an additive [B, 1, T, T] mask used instead of the causal one (see `_document_mask`)."""
    groups = q.shape[1] // k.shape[1]
    k = _repeat_kv(k, groups)
    v = _repeat_kv(v, groups)
    weights = torch.matmul(q, k.transpose(2, 3)) * scale
    if mask is not None:
        weights = weights + mask
    elif causal:
        weights = weights + _causal_mask(q.shape[2], q.dtype, q.device)
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v)


def _document_mask(seq_idx: torch.Tensor, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, T, T] additive mask from seq_idx [B, T]: 0 where query and key share a document (and,
    when causal, the key is not later), finfo(dtype).min elsewhere. No host sync: traceable."""
    allowed = seq_idx[:, :, None] == seq_idx[:, None, :]
    if causal:
        length = seq_idx.shape[1]
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=seq_idx.device).tril()
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=seq_idx.device)
    return zeros.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def _causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[length, length] additive mask: 0 where a query may look, finfo(dtype).min above the diagonal (as transformers' eager mask)."""
    future = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(future, torch.finfo(dtype).min)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, Hkv, T, D] -> [B, Hkv*groups, T, D], each kv head repeated for its group (transformers' repeat_kv)."""
    if groups == 1:
        return x
    batch, heads, length, head_dim = x.shape
    return x[:, :, None].expand(batch, heads, groups, length, head_dim).reshape(batch, heads * groups, length, head_dim)


def kernel() -> str:
    """What this op runs, for OpTable.backends (chosen per call: compiled or not)."""
    return "transformers' eager attention per document; inside a compiled layer one block-diagonal masked attention per row"
