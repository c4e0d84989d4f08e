"""The read-only packing context every layer receives.

One batch row may hold several documents. The collator (or, for plain unpacked input, the model's
entry point) computes this once per batch on the host; layers only read it. Nothing may cross a
document boundary: not attention, not the conv1d window, not the delta-rule state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def host_to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`. A copy from the host to a GPU is queued without waiting for the GPU
    (`non_blocking`): a blocking one synchronizes the stream, so the host could not queue the next
    step's work while the GPU still runs this one's (the optimizer step, say). Safe from any host
    memory: pinned memory is kept alive by PyTorch's host allocator until the copy is done, and
    CUDA stages pageable memory before the call returns. Other copies (to the host) block as usual."""
    return tensor.to(device, non_blocking=torch.device(device).type == "cuda" and tensor.device.type == "cpu")


@dataclass(frozen=True)
class PackingContext:
    """Document layout of a batch of shape [B, T].

    cu_seqlens:   [D + 1] int32, cumulative document lengths over the flattened B*T tokens
                  (a document never spans two rows). D = number of documents.
    max_seqlen:   int, the longest document (a Python int so kernels need no device sync).
    seq_idx:      [B, T] int32, index of the document each token belongs to (0..D-1).
    position_ids: [3, B, T] int64, mRoPE positions (temporal, height, width); for text-only
                  documents all three rows equal the position inside the document.
    """

    cu_seqlens: torch.Tensor
    max_seqlen: int
    seq_idx: torch.Tensor
    position_ids: torch.Tensor

    @property
    def num_documents(self) -> int:
        return self.cu_seqlens.numel() - 1

    def document_lengths(self) -> list[int]:
        """Lengths of the documents in order (host list; the context lives on the host's terms)."""
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()

    def to(self, device: torch.device | str) -> "PackingContext":
        """The context on `device`; a host-to-GPU copy does not wait for the GPU (see `host_to_device`)."""
        return PackingContext(
            cu_seqlens=host_to_device(self.cu_seqlens, device),
            max_seqlen=self.max_seqlen,
            seq_idx=host_to_device(self.seq_idx, device),
            position_ids=host_to_device(self.position_ids, device),
        )

    def pin_memory(self) -> "PackingContext":
        """The context in page-locked host memory (the DataLoader calls this with `pin_memory=True`)."""
        return PackingContext(cu_seqlens=self.cu_seqlens.pin_memory(), max_seqlen=self.max_seqlen,
                              seq_idx=self.seq_idx.pin_memory(), position_ids=self.position_ids.pin_memory())

    @staticmethod
    def from_document_lengths(lengths_per_row: list[list[int]], position_ids: torch.Tensor | None = None) -> "PackingContext":
        """Build the context for rows of documents, e.g. [[5, 3], [8]] for a [2, 8] batch.

        Without `position_ids`, text positions restart at 0 in every document (all three mRoPE
        axes equal).
        """
        lengths = [n for row in lengths_per_row for n in row]
        row_len = sum(lengths_per_row[0])
        if any(sum(row) != row_len for row in lengths_per_row):
            raise ValueError(f"every row must hold the same number of tokens, got {[sum(r) for r in lengths_per_row]}")
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
        seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths))
        seq_idx = seq_idx.view(len(lengths_per_row), row_len)
        if position_ids is None:
            pos = torch.cat([torch.arange(n) for n in lengths]).view(1, len(lengths_per_row), row_len)
            position_ids = pos.expand(3, -1, -1).contiguous()
        return PackingContext(cu_seqlens=cu, max_seqlen=max(lengths), seq_idx=seq_idx, position_ids=position_ids)
