"""A decoder-only language model: token embedding → text tower → final norm → (tied) LM head.

transformers' `*ForCausalLM` layout (Qwen3, Llama, ...): parameter names are the HF checkpoint's
(`model.embed_tokens`, `model.layers.N.*`, `model.norm`, `lm_head`), so loading and saving HF
checkpoints is a copy. Text only: every token has one position, given to the rotary embedding on
all three of its axes (a tower whose rope gives every frequency to the first axis is plain RoPE).
"""

from __future__ import annotations

import torch
from torch import nn

from blocks.lm_loss import LanguageModelOutput, lm_output
from blocks.ops import OpTable
from blocks.packing import PackingContext
from blocks.text_tower import TextTower
from blocks.vision_grid import VisionLayout


class CausalLanguageModel(nn.Module):
    """input_ids [B, T] -> loss and/or logits [B, T, V]; `model` is the text tower."""

    def __init__(self, *, model: TextTower, tie_word_embeddings: bool, ops: OpTable) -> None:
        super().__init__()
        self.model = model
        vocab_size, hidden_size = model.embed_tokens.weight.shape
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        self.tie_word_embeddings = tie_word_embeddings
        if tie_word_embeddings:
            self.tie_weights()
        self.ops = ops

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding (transformers' name for it)."""
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        """The LM head (transformers' name for it); the loss op reads its weight directly, never calls it."""
        return self.lm_head

    def tie_weights(self) -> None:
        """Share the embedding with the LM head (call again after `to_empty`, which unties)."""
        self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        shift_labels: torch.Tensor | None = None,
        packing: PackingContext | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        idle_vision: bool = False,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        image_layout: VisionLayout | None = None,
        video_layout: VisionLayout | None = None,
    ) -> LanguageModelOutput:
        """Forward pass, transformers-compatible for unpacked input (see `lm_output` for the targets).

        packing: the batch's document layout; None means one document per row, positions 0..T-1.
        pixel_values / image_grid_thw / pixel_values_videos / video_grid_thw / image_layout / video_layout: refused (a
            text-only model); `idle_vision` is accepted and ignored, so the training step calls every model alike.
        """
        if any(x is not None for x in (pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, image_layout, video_layout)):
            raise ValueError("this model has no vision tower, but pixel_values were given")
        if packing is None:
            batch, length = input_ids.shape
            packing = PackingContext.from_document_lengths([[length]] * batch).to(input_ids.device)
        hidden = self.model(self.model.embed_tokens(input_ids), packing)
        return lm_output(hidden, self.lm_head, self.ops, labels=labels, shift_labels=shift_labels,
                         num_items_in_batch=num_items_in_batch, return_logits=return_logits)
