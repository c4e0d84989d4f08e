"""The `fast` attention's path for batches of one document per row (PyTorch's fused SDPA with native
GQA) runs on CPU too: against the `hf` op, outputs and gradients, causal and not."""

import pytest
import torch

from blocks.ops import fast_attention, hf_attention
from blocks.packing import PackingContext


@pytest.mark.parametrize("causal", [True, False])
def test_one_document_per_row_matches_hf(causal):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 24, heads, 8, generator=generator).requires_grad_() for heads in (4, 2, 2))
    ctx = PackingContext.from_document_lengths([[24], [24]])
    out = fast_attention.attention(q, k, v, scale=0.3, causal=causal, ctx=ctx)
    reference = hf_attention.attention(q, k, v, scale=0.3, causal=causal, ctx=ctx)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    probe = torch.randn(out.shape, generator=generator)
    grads = torch.autograd.grad((out * probe).sum(), (q, k, v))
    reference_grads = torch.autograd.grad((reference * probe).sum(), (q, k, v))
    for grad, reference_grad in zip(grads, reference_grads):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-5)
