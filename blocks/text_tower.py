"""The hybrid text tower: token embedding, decoder layers, final norm (HF: `model.language_model`)."""

from __future__ import annotations

import torch
from torch import nn

from blocks.context import TextContext
from blocks.packing import PackingContext
from blocks.rope import TextRotaryEmbedding


class TextTower(nn.Module):
    """Embeds tokens and runs the decoder layers; composed by the assembler from built blocks.

    Attribute names are the HF checkpoint's: `embed_tokens`, `layers.N`, `norm`.
    """

    def __init__(self, *, embed_tokens: nn.Embedding, layers: list[nn.Module], norm: nn.Module, rotary_emb: TextRotaryEmbedding):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.rotary_emb = rotary_emb

    def context(self, inputs_embeds: torch.Tensor, packing: PackingContext) -> TextContext:
        """The read-only context of a forward over `inputs_embeds` [B, T, H]: the packing and the
        rotary cos/sin of its positions (what a multi-token-prediction layer reads too)."""
        return TextContext(packing=packing, rotary=self.rotary_emb(inputs_embeds, packing.position_ids))

    def forward(self, inputs_embeds: torch.Tensor, packing: PackingContext) -> torch.Tensor:
        """inputs_embeds [B, T, H] -> final-normed hidden states [B, T, H]."""
        ctx = self.context(inputs_embeds, packing)
        hidden = inputs_embeds
        for layer in self.layers:
            hidden = layer(hidden, ctx)
        return self.norm(hidden)
