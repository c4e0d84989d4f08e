"""`hf` conv1d: transformers' torch `causal_conv1d_fn` (Qwen3.5), run per document."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blocks.ops.hf_documents import from_padded_documents, to_padded_documents
from blocks.packing import PackingContext


def conv1d(x: torch.Tensor, weight: torch.Tensor, *, ctx: PackingContext) -> torch.Tensor:
    """Depthwise causal conv followed by silu; the window restarts at every document.

    x: [B, T, C], weight: [C, K] -> [B, T, C] in x's dtype.
    Bitwise transformers' `causal_conv1d_fn(x.transpose(1, 2), weight, None, activation="silu")`
    for one document per row: the conv runs in the weight's dtype on [.., C, T] with K - 1 zeros
    on the left (F.conv1d pads both sides; the right part is sliced off).
    """
    channels, kernel_size = weight.shape
    documents = to_padded_documents(x, ctx).transpose(1, 2)  # [D, C, L]
    length = documents.shape[-1]
    out = F.conv1d(
        documents.to(weight.dtype), weight.unsqueeze(1), padding=kernel_size - 1, groups=channels
    )[:, :, :length]
    out = F.silu(out).to(x.dtype)
    return from_padded_documents(out.transpose(1, 2), ctx)


def kernel() -> str:
    """What this op runs, for OpTable.backends."""
    return "transformers' torch causal_conv1d per document"
