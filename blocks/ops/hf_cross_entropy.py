"""`hf` cross-entropy: the LM head matmul followed by transformers' `ForCausalLMLoss`, op for op."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blocks.constants import IGNORE_INDEX


def cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token loss from hidden states. hidden: [N, H], weight: [V, H], labels: [N] -> scalar fp32.

    `labels` are ALREADY SHIFTED (label i is the target of token i; what transformers calls
    `shift_labels`): the caller shifts, because only it knows where documents end in a packed row.
    Bitwise transformers' `lm_head(hidden)` then `ForCausalLMLoss(logits, shift_labels=labels)`:
    logits in the activation dtype, upcast to fp32, then the mean over non-ignored labels, or the
    sum divided by `num_items` when given (global-token normalisation across steps and ranks).
    """
    logits = F.linear(hidden, weight).float()
    reduction = "sum" if num_items is not None else "mean"
    loss = F.cross_entropy(logits, labels.to(logits.device), ignore_index=ignore_index, reduction=reduction)
    if num_items is not None:
        if torch.is_tensor(num_items):
            num_items = num_items.to(loss.device)
        loss = loss / num_items
    return loss


def kernel() -> str:
    """What this op runs, for OpTable.backends."""
    return "LM head matmul, then transformers' ForCausalLMLoss on the whole logits"
