"""`fast` cross-entropy: LM head + cross-entropy in token chunks, never holding the full logits.

Full fp32 logits of Qwen3.5's 248,320-entry vocabulary take 1 MB per token (16 GB at 16k tokens)
and their gradient as much again. Here the tokens go through in chunks of CHUNK_LOGITS_BYTES of
logits in the activation dtype; each chunk's gradient is computed right away, in the forward
(softmax − one-hot is all the backward needs, and the logits are at hand), and folded into the
hidden-state and weight gradients. The backward then only scales those by the incoming gradient:
per step the LM head costs three matmuls, as unfused, and the peak is one chunk of logits and its
gradient plus the weight gradient.

On a GPU the per-chunk arithmetic (upcast, log-sum-exp, target logit, softmax − one-hot, scale,
downcast) is one `torch.compile`d function: Inductor fuses it into a few passes over the bf16
logits, where eager PyTorch made eight over fp32 copies (about 40 ms a step at 8k tokens on an
H200, BENCHMARKS.md). A hand-written kernel (Liger's) would save one more pass; Inductor's fusion
keeps the code plain PyTorch and needs no extra dependency.

Numerics match the `hf` op: logits come out of the matmul in the activation dtype and are upcast
to fp32 for log-sum-exp (transformers' `ForCausalLMLoss`); the weight gradient accumulates over
chunks in fp32.
"""

from __future__ import annotations

import torch

from blocks.constants import IGNORE_INDEX

CHUNK_LOGITS_BYTES = 2 * 2**30  # logits of one chunk in the activation dtype: 2 GiB (about 4,300 bf16 tokens of Qwen3.5)

# cuBLAS can sum a bf16 product straight into an fp32 matrix (torch >= 2.8, CUDA only); elsewhere
# the product is rounded to the activation dtype and added in a separate pass.
_ADDMM_HAS_OUT_DTYPE = hasattr(torch.ops.aten.addmm, "dtype_out")


def cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
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
    chunk_tokens = max(1, CHUNK_LOGITS_BYTES // (hidden.element_size() * weight.shape[0]))
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, labels, divisor, ignore_index, chunk_tokens)


def loss_and_logit_gradient(
    logits: torch.Tensor, labels: torch.Tensor, divisor: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's summed loss and d(loss)/d(logits).

    logits: [n, V] (activation dtype), labels: [n], divisor: scalar fp32
    -> (sum over valid tokens of (log-sum-exp − target logit): scalar fp32,
        (softmax − one_hot(label)) · valid / divisor: [n, V] in the logits' dtype).
    """
    logits32 = logits.float()
    valid = labels != ignore_index
    target = torch.where(valid, labels, 0)
    log_normalizer = torch.logsumexp(logits32, dim=-1)
    target_logit = logits32.gather(1, target[:, None]).squeeze(1)
    loss_sum = torch.where(valid, log_normalizer - target_logit, 0.0).sum()
    probabilities = torch.exp(logits32 - log_normalizer[:, None])
    is_target = torch.arange(logits.shape[1], device=logits.device)[None, :] == target[:, None]
    grad = (probabilities - is_target.float()) * (valid.float() / divisor)[:, None]
    return loss_sum, grad.to(logits.dtype)


_compiled_loss_and_logit_gradient = None


def _chunk_math(logits: torch.Tensor):  # noqa: ANN202
    """The compiled per-chunk function on a GPU, the eager one elsewhere (tests on CPU, no compiler needed)."""
    global _compiled_loss_and_logit_gradient
    if not logits.is_cuda:
        return loss_and_logit_gradient
    if _compiled_loss_and_logit_gradient is None:
        _compiled_loss_and_logit_gradient = torch.compile(loss_and_logit_gradient, fullgraph=True)
    return _compiled_loss_and_logit_gradient


def _accumulate_weight_gradient(grad_weight: torch.Tensor | None, grad_logits: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """grad_weight (fp32 [V, H], or None for the first chunk) += grad_logits.T @ hidden, the product in the activation dtype."""
    if grad_logits.is_cuda and _ADDMM_HAS_OUT_DTYPE and grad_logits.dtype != torch.float32:
        if grad_weight is None:
            return torch.mm(grad_logits.T, hidden, out_dtype=torch.float32)
        return torch.addmm(grad_weight, grad_logits.T, hidden, out_dtype=torch.float32, out=grad_weight)
    product = (grad_logits.T @ hidden).float()
    return product if grad_weight is None else grad_weight.add_(product)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, divisor, ignore_index, chunk_tokens):  # noqa: ANN001, ANN205
        need_hidden_grad, need_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        chunk_math = _chunk_math(hidden)
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if need_hidden_grad else None
        grad_weight = None
        for start in range(0, hidden.shape[0], chunk_tokens):
            chunk = slice(start, start + chunk_tokens)
            h = hidden[chunk]
            logits = h @ weight.T  # [n, V] in the activation dtype, as the reference's lm_head
            chunk_loss, grad_logits = chunk_math(logits, labels[chunk], divisor, ignore_index)
            del logits
            loss_sum += chunk_loss
            if need_hidden_grad:
                torch.mm(grad_logits, weight, out=grad_hidden[chunk])
            if need_weight_grad:
                grad_weight = _accumulate_weight_gradient(grad_weight, grad_logits, h)
            del grad_logits
        if need_weight_grad and grad_weight is None:  # no tokens at all
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if grad_weight is not None else None)
        return loss_sum / divisor

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: ANN001, ANN205
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype) if grad_hidden is not None else None
        grad_weight = grad_weight * grad_loss.to(grad_weight.dtype) if grad_weight is not None else None
        return grad_hidden, grad_weight, None, None, None, None


def kernel() -> str:
    """What this op runs on this machine, for OpTable.backends (the chunk math chosen per call)."""
    weight_sum = "cuBLAS fp32 accumulation (addmm out_dtype)" if _ADDMM_HAS_OUT_DTYPE else "products rounded, then added in fp32"
    return (f"chunked LM head + loss ({CHUNK_LOGITS_BYTES // 2**30} GiB of logits per chunk), chunk math compiled on CUDA "
            f"and eager elsewhere; weight gradient: {weight_sum}")
