"""A rotary embedding's inverse frequencies, kept fp32 through every cast and move."""

from __future__ import annotations

import torch
from torch import nn


class Fp32InverseFrequencies(nn.Module):
    """Base of the rotary modules: owns the non-persistent `inv_freq` buffer.

    `model.to(torch.bfloat16)` would round inv_freq to bf16, but transformers'
    from_pretrained(dtype=bf16) keeps it fp32 (a non-persistent buffer computed at init), and that
    model is the oracle: bf16 inv_freq moves every angle at long positions. inv_freq is a pure
    function of the module's hyper-parameters, so after any move/cast (to, cuda, bfloat16, to_empty
    from meta) it is re-derived in fp32 on the CPU and only moved to the device the cast chose.
    Re-deriving (not keeping a copy) is also right after `to_empty`, which leaves buffers
    uninitialised. Subclasses define `_compute_inv_freq()` and call `_register_inv_freq()`.
    """

    def _compute_inv_freq(self) -> torch.Tensor:
        raise NotImplementedError

    def _register_inv_freq(self) -> None:
        self.register_buffer("inv_freq", self._compute_inv_freq(), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.reset_buffers()
        return self

    def reset_buffers(self) -> None:
        """Recompute inv_freq (fp32) on the device it is on now (the assembler's init hook too)."""
        self.inv_freq = self._compute_inv_freq().to(self.inv_freq.device)
