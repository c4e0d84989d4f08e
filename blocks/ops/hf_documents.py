"""Packed rows <-> one document per row, for the `hf` ops that keep state along the sequence.

The `hf` conv1d and delta rule are transformers' per-sequence code, which knows nothing of
documents. Moving every document of a packed batch into its own zero-padded row lets that code run
unchanged while no window or state can cross a document boundary: documents never share a row. Right zero-padding is what the reference itself
does (conv1d pads, the delta rule pads to whole chunks), so it changes no real token's output.

A batch that already holds one document per row is passed through untouched: the copies would
give the same values but other memory layouts, and the backward's sums then add in another order
(the last bits of e.g. A_log's gradient differ from the reference's).
"""

from __future__ import annotations

import torch

from blocks.packing import PackingContext


def document_coordinates(ctx: PackingContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(document index, position inside its document) of every token of the flattened [B*T] batch."""
    document = ctx.seq_idx.reshape(-1).long()
    position = torch.arange(document.numel(), device=document.device) - ctx.cu_seqlens.long()[document]
    return document, position


def is_one_document_per_row(ctx: PackingContext) -> bool:
    """True when every row is exactly one document (D == B; documents never span rows)."""
    return ctx.num_documents == ctx.seq_idx.shape[0]


def to_padded_documents(x: torch.Tensor, ctx: PackingContext) -> torch.Tensor:
    """[B, T, ...] packed rows -> [D, max_seqlen, ...], document d in row d, zeros after its end."""
    if tuple(x.shape[:2]) != tuple(ctx.seq_idx.shape):
        raise ValueError(
            f"the packing context describes a {tuple(ctx.seq_idx.shape)} batch but the tensor is "
            f"{tuple(x.shape)}; build the context for the batch these activations come from"
        )
    if is_one_document_per_row(ctx):
        return x
    document, position = document_coordinates(ctx)
    tokens = x.reshape(-1, *x.shape[2:])
    padded = tokens.new_zeros(ctx.num_documents, ctx.max_seqlen, *x.shape[2:])
    return padded.index_put((document, position), tokens)


def from_padded_documents(padded: torch.Tensor, ctx: PackingContext) -> torch.Tensor:
    """[D, max_seqlen, ...] -> [B, T, ...] packed rows (the padding is dropped); inverse of `to_padded_documents`."""
    if is_one_document_per_row(ctx):
        return padded
    document, position = document_coordinates(ctx)
    return padded[document, position].reshape(*ctx.seq_idx.shape, *padded.shape[2:])
