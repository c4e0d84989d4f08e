"""`fast` cross-entropy: LM head + cross-entropy in token chunks, never holding the full logits.

Full fp32 logits of Qwen3.5's 248,320-entry vocabulary take 1 MB per token (16 GB at 16k tokens)
and their gradient as much again. Here the tokens go through in chunks of CHUNK_LOGITS_BYTES of
fp32 logits; each chunk's gradient is computed right away, in the forward (softmax − one-hot is
all the backward needs, and the logits are at hand), and folded into the hidden-state and weight
gradients. The backward then only scales those by the incoming gradient: per step the LM head
costs three matmuls, as unfused, and the peak is one chunk of logits plus the weight gradient.

Numerics match the `hf` op: logits come out of the matmul in the activation dtype and are upcast
to fp32 for log-sum-exp (transformers' `ForCausalLMLoss`); the weight gradient accumulates over
chunks in fp32.
"""

from __future__ import annotations

import torch

CHUNK_LOGITS_BYTES = 2 * 2**30  # fp32 logits of one chunk: 2 GiB (about 2,000 tokens of Qwen3.5)


def cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token loss from hidden states. hidden: [N, H], weight: [V, H], labels: [N] (already shifted) -> scalar fp32.

    Mean over non-ignored labels, or the sum divided by `num_items` when given.
    """
    labels = labels.to(hidden.device)
    if num_items is None:
        divisor = (labels != ignore_index).sum().float()
    elif torch.is_tensor(num_items):
        divisor = num_items.to(hidden.device, torch.float32)
    else:
        divisor = torch.tensor(float(num_items), device=hidden.device)
    chunk_tokens = max(1, CHUNK_LOGITS_BYTES // (4 * weight.shape[0]))
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, labels, divisor, ignore_index, chunk_tokens)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, divisor, ignore_index, chunk_tokens):  # noqa: ANN001, ANN205
        need_hidden_grad, need_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight_grad else None
        for start in range(0, hidden.shape[0], chunk_tokens):
            chunk = slice(start, start + chunk_tokens)
            h, y = hidden[chunk], labels[chunk]
            logits = (h @ weight.T).float()  # [n, V]: the activation-dtype matmul, then fp32, as the reference
            valid = y != ignore_index
            target = torch.where(valid, y, 0)
            log_normalizer = torch.logsumexp(logits, dim=-1)
            target_logit = logits.gather(1, target[:, None]).squeeze(1)
            loss_sum += torch.where(valid, log_normalizer - target_logit, 0.0).sum()
            if not (need_hidden_grad or need_weight_grad):
                continue
            # d loss / d logits = (softmax - one_hot(target)) · valid / divisor, built in place of the logits.
            grad_logits = logits.sub_(log_normalizer[:, None]).exp_()
            grad_logits.scatter_add_(1, target[:, None], -valid[:, None].float())
            grad_logits.mul_((valid.float() / divisor)[:, None])
            grad_logits = grad_logits.to(hidden.dtype)
            del logits
            if need_hidden_grad:
                grad_hidden[chunk] = grad_logits @ weight
            if need_weight_grad:
                grad_weight.add_(grad_logits.T @ h)  # activation-dtype product, fp32 sum
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if grad_weight is not None else None)
        return loss_sum / divisor

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: ANN001, ANN205
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype) if grad_hidden is not None else None
        grad_weight = grad_weight * grad_loss.to(grad_weight.dtype) if grad_weight is not None else None
        return grad_hidden, grad_weight, None, None, None, None
