"""The language-model head's output: the loss over next-token targets and, when asked, the logits.

Shared by every top-level model (`VisionLanguageModel`, `CausalLanguageModel`): the loss never
needs the full [B, T, V] logits (the op table's cross-entropy takes the hidden states and the head
weight), so they are computed only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from blocks.constants import IGNORE_INDEX
from blocks.ops import OpTable


@dataclass
class LanguageModelOutput:
    """loss: the next-token loss, scalar, or None without labels. logits: [B, T, V], or None when
    not asked for. A model with a multi-token-prediction head (`model.mtp`) adds its loss over
    the token after next (`mtp_loss`, unweighted), its logits (`mtp_logits` [B, T, V]: row t
    predicts token t+2) and the weight the training objective gives it."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mtp_loss: torch.Tensor | None = None
    mtp_logits: torch.Tensor | None = None
    mtp_loss_weight: float = 0.0

    @property
    def training_loss(self) -> torch.Tensor | None:
        """What a training step backpropagates: `loss`, plus `mtp_loss_weight` x `mtp_loss` when there is one."""
        if self.mtp_loss is None:
            return self.loss
        return self.loss + self.mtp_loss_weight * self.mtp_loss


def next_token_targets(labels: torch.Tensor | None, shift_labels: torch.Tensor | None) -> torch.Tensor | None:
    """[B, T] already-aligned targets (target t is token t+1) from transformers-style `labels` or
    given `shift_labels`; None when neither is given. Giving both is an error."""
    if labels is not None and shift_labels is not None:
        raise ValueError("give labels or shift_labels, not both")
    if labels is not None:
        return nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    return shift_labels


def lm_output(
    hidden: torch.Tensor,
    lm_head: nn.Linear,
    ops: OpTable,
    *,
    labels: torch.Tensor | None,
    shift_labels: torch.Tensor | None,
    num_items_in_batch: int | torch.Tensor | None,
    return_logits: bool | None,
) -> LanguageModelOutput:
    """hidden [B, T, H] (final-normed) -> loss and/or logits.

    labels:       [B, T] as in transformers: shifted here (label t+1 is the target of token t).
    shift_labels: [B, T] already-aligned next-token targets. Give at most one of the two.
    num_items_in_batch: divide the summed loss by this instead of taking the mean.
    return_logits: default: only when there are no targets.
    """
    shift_labels = next_token_targets(labels, shift_labels)
    loss = None
    if shift_labels is not None:
        loss = ops.cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]),
            lm_head.weight,
            shift_labels.reshape(-1).to(hidden.device),
            ignore_index=IGNORE_INDEX,
            num_items=num_items_in_batch,
        )
    if return_logits is None:
        return_logits = shift_labels is None
    logits = lm_head(hidden) if return_logits else None
    return LanguageModelOutput(loss=loss, logits=logits)
