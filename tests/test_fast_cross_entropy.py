"""The `fast` chunked linear cross-entropy is plain PyTorch, so it runs here too: against the `hf`
op (full logits), for the loss and both gradients, over several chunks, with ignored labels, mean
and global-token (num_items) normalisation, and an outer gradient scale."""

import pytest
import torch

from blocks.ops import fast_cross_entropy, hf_cross_entropy


@pytest.mark.parametrize("num_items", [None, 37, torch.tensor(41)])
def test_chunked_cross_entropy_matches_full_logits(num_items, monkeypatch):
    vocab, tokens, hidden_size = 300, 50, 16
    monkeypatch.setattr(fast_cross_entropy, "CHUNK_LOGITS_BYTES", 4 * vocab * 13)  # 13-token chunks of fp32 logits: 4 of them
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, generator=generator, dtype=torch.float32).requires_grad_()
    weight = (0.3 * torch.randn(vocab, hidden_size, generator=generator, dtype=torch.float32)).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=generator)
    labels[::5] = -100

    loss = fast_cross_entropy.cross_entropy(hidden, weight, labels, num_items=num_items)
    grads = torch.autograd.grad(2.5 * loss, (hidden, weight))
    reference = hf_cross_entropy.cross_entropy(hidden, weight, labels, num_items=num_items)
    reference_grads = torch.autograd.grad(2.5 * reference, (hidden, weight))

    torch.testing.assert_close(loss, reference.to(loss.dtype), rtol=1e-5, atol=1e-6)
    for grad, reference_grad in zip(grads, reference_grads):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-6)


def test_chunked_cross_entropy_without_gradients_still_gives_the_loss():
    hidden, weight = torch.randn(20, 8), torch.randn(100, 8)
    labels = torch.randint(0, 100, (20,))
    with torch.no_grad():
        loss = fast_cross_entropy.cross_entropy(hidden, weight, labels)
    torch.testing.assert_close(loss, hf_cross_entropy.cross_entropy(hidden, weight, labels))
