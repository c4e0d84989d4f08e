"""The `hf` cross-entropy is bitwise transformers' lm_head + ForCausalLMLoss (mean and global-token sum)."""

import pytest
import torch
from torch import nn

from blocks.ops.hf_cross_entropy import cross_entropy
from transformers.loss.loss_utils import ForCausalLMLoss

VOCAB, HIDDEN = 40, 16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_items", [None, 7, torch.tensor(7)])
def test_cross_entropy_is_transformers_causal_lm_loss(dtype, num_items):
    generator = torch.Generator().manual_seed(0)
    lm_head = nn.Linear(HIDDEN, VOCAB, bias=False).to(dtype)
    hidden = torch.randn(2, 6, HIDDEN, generator=generator).to(dtype).requires_grad_()
    labels = torch.randint(0, VOCAB, (2, 6), generator=generator)
    labels[0, :2] = -100

    reference = ForCausalLMLoss(lm_head(hidden), labels, VOCAB, num_items_in_batch=num_items)
    ref_grads = torch.autograd.grad(reference, (hidden, lm_head.weight))

    # The reference shifts `labels` itself; our op takes the shifted targets.
    shift_labels = nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    ours = cross_entropy(hidden.reshape(-1, HIDDEN), lm_head.weight, shift_labels.reshape(-1), num_items=num_items)
    grads = torch.autograd.grad(ours, (hidden, lm_head.weight))

    assert ours.dtype == torch.float32
    assert torch.equal(ours, reference)
    assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads))


def test_unshifted_labels_give_a_different_loss():
    # Guards the contract "labels are already shifted": passing raw labels must not pass silently as equal.
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(VOCAB, HIDDEN, generator=generator)
    hidden = torch.randn(1, 6, HIDDEN, generator=generator)
    labels = torch.randint(0, VOCAB, (1, 6), generator=generator)
    reference = ForCausalLMLoss(hidden @ weight.T, labels, VOCAB)
    assert not torch.equal(cross_entropy(hidden.reshape(-1, HIDDEN), weight, labels.reshape(-1)), reference)
