"""The multi-token-prediction head of the released Qwen3.5 checkpoints (their `mtp.*` tensors), as
vLLM and SGLang run it for speculative decoding and as it is trained here: an auxiliary loss that
predicts the token after next.

At position t the head reads the main tower's final-normed hidden state h_t and the input
embedding of token t+1, and predicts token t+2:

    x_t    = fc([pre_fc_norm_embedding(embed(token t+1)) | pre_fc_norm_hidden(h_t)])   (2H -> H)
    y      = norm(layers(x))            one decoder layer of the text tower's kind, same rotary
                                        positions (token t's), same document-masked attention
    logits = lm_head(y)                 the main model's (tied) head

Packed rows: a position whose t+1 lies in another document gets a zero embedding and no target,
and one whose t+2 does gets no target (the collator's `shift_labels` already ends each document
with IGNORE_INDEX), so nothing of one document enters another's prediction. The attention of the
head's layer reads the same packing context as the tower's, so it cannot look across either.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from blocks.constants import IGNORE_INDEX
from blocks.context import TextContext


class MultiTokenPrediction(nn.Module):
    """[B, T, H] hidden states and next-token embeddings -> [B, T, H] final-normed MTP states.

    Attribute names are the HF checkpoint's under `mtp.`: `fc`, `pre_fc_norm_embedding`,
    `pre_fc_norm_hidden`, `layers.N` (decoder layers: `self_attn`, `mlp`, their norms), `norm`.
    Not a registered block: the assembler composes it from the text tower's blocks.
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        layers: list[nn.Module],
        pre_fc_norm_embedding: nn.Module,
        pre_fc_norm_hidden: nn.Module,
        norm: nn.Module,
        loss_weight: float,
    ) -> None:
        super().__init__()
        self.pre_fc_norm_embedding = pre_fc_norm_embedding
        self.pre_fc_norm_hidden = pre_fc_norm_hidden
        # The embedding half comes first in the concatenation, as vLLM's and SGLang's Qwen3.5 MTP
        # read the released `mtp.fc.weight` [H, 2H].
        self.fc = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.loss_weight = loss_weight

    def forward(self, hidden_states: torch.Tensor, next_embeds: torch.Tensor, ctx: TextContext) -> torch.Tensor:
        """hidden_states [B, T, H]: the tower's final-normed output h_t; next_embeds [B, T, H]: the
        input embedding of token t+1 (zero where there is none in t's document, see
        `next_token_embeddings`) -> [B, T, H], what the LM head turns into token t+2's logits."""
        joined = torch.cat([self.pre_fc_norm_embedding(next_embeds), self.pre_fc_norm_hidden(hidden_states)], dim=-1)
        hidden = self.fc(joined)
        for layer in self.layers:
            hidden = layer(hidden, ctx)
        return self.norm(hidden)


def same_document_as_next(seq_idx: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: token t+1 exists and belongs to token t's document (seq_idx [B, T])."""
    same = seq_idx[:, 1:] == seq_idx[:, :-1]
    return F.pad(same, (0, 1), value=False)


def next_token_embeddings(inputs_embeds: torch.Tensor, seq_idx: torch.Tensor) -> torch.Tensor:
    """[B, T, H] -> [B, T, H]: row t holds the embedding of token t+1 (image features included, as
    the tower saw them), zero at the last token of every document and of the row."""
    shifted = F.pad(inputs_embeds[:, 1:], (0, 0, 0, 1))
    return shifted.masked_fill(~same_document_as_next(seq_idx.to(shifted.device)).unsqueeze(-1), 0.0)


def next_next_token_labels(shift_labels: torch.Tensor, seq_idx: torch.Tensor) -> torch.Tensor:
    """[B, T] targets of the MTP head: at t, token t+2 = `shift_labels[t+1]` when t+1 is in t's
    document (then t+2 is too, or shift_labels[t+1] is already IGNORE_INDEX), else IGNORE_INDEX.
    Loss masking carries over: a target the main loss ignores, the MTP loss ignores one step earlier."""
    later = F.pad(shift_labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return later.masked_fill(~same_document_as_next(seq_idx.to(shift_labels.device)), IGNORE_INDEX)
