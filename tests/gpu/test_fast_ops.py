"""Each `fast` op against its `hf` twin on the GPU, packed documents included: outputs and gradients."""

import pytest
import torch

from blocks.ops import fast_attention, fast_conv1d, fast_cross_entropy, fast_norms, hf_attention, hf_conv1d, hf_cross_entropy, hf_norms
from blocks.packing import PackingContext

pytestmark = pytest.mark.gpu
pytest.importorskip("fla", reason="the fast delta rule and conv1d need flash-linear-attention (fla)")

CUDA = "cuda"
LENGTHS = [[100, 156], [40, 216]]  # two rows of 256 tokens, two documents each


def _leaves(*shapes, dtype=torch.bfloat16, seed=0):
    generator = torch.Generator(device=CUDA).manual_seed(seed)
    return [torch.randn(*s, generator=generator, device=CUDA).to(dtype).requires_grad_() for s in shapes]


def _compare(fast_fn, hf_fn, leaves, tolerance):
    out = fast_fn(*leaves)
    reference = hf_fn(*leaves)
    probe = torch.randn_like(reference, dtype=torch.float32)
    grads = torch.autograd.grad((out.float() * probe).sum(), leaves)
    reference_grads = torch.autograd.grad((reference.float() * probe).sum(), leaves)
    errors = [((out.float() - reference.float()).norm() / reference.float().norm()).item()]
    errors += [((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(grads, reference_grads)]
    assert max(errors) < tolerance, errors


@pytest.mark.parametrize("lengths", [LENGTHS, [[256], [256]]], ids=["packed", "one-document-per-row"])
@pytest.mark.parametrize("causal, hq, hkv, d", [(True, 16, 4, 256), (False, 16, 16, 64), (True, 4, 2, 32)])
def test_fast_attention_matches_hf(causal, hq, hkv, d, lengths):
    ctx = PackingContext.from_document_lengths(lengths).to(CUDA)
    leaves = _leaves((2, 256, hq, d), (2, 256, hkv, d), (2, 256, hkv, d))
    scale = d**-0.5
    _compare(
        lambda q, k, v: fast_attention.attention(q, k, v, scale=scale, causal=causal, ctx=ctx),
        lambda q, k, v: hf_attention.attention(q, k, v, scale=scale, causal=causal, ctx=ctx),
        leaves, 2e-2,
    )


def test_fast_conv1d_matches_hf():
    ctx = PackingContext.from_document_lengths(LENGTHS).to(CUDA)
    leaves = _leaves((2, 256, 384), (384, 4))
    _compare(lambda x, w: fast_conv1d.conv1d(x, w, ctx=ctx), lambda x, w: hf_conv1d.conv1d(x, w, ctx=ctx), leaves, 2e-2)


@pytest.mark.parametrize("zero_centered", [True, False])
def test_fast_rms_norm_matches_hf(zero_centered):
    x, weight = _leaves((2, 256, 2560), (2560,))
    _compare(
        lambda x, w: fast_norms.rms_norm(x, w, eps=1e-6, zero_centered=zero_centered),
        lambda x, w: hf_norms.rms_norm(x, w, eps=1e-6, zero_centered=zero_centered),
        [x, weight], 1e-2,
    )


def test_fast_gated_rms_norm_matches_hf_with_fp32_weight():
    x, gate = _leaves((512, 128), (512, 128))
    weight = (1 + 0.1 * torch.randn(128, device=CUDA)).requires_grad_()  # fp32-kept, as under the spec
    _compare(
        lambda x, z, w: fast_norms.gated_rms_norm(x, z, w, eps=1e-6),
        lambda x, z, w: hf_norms.gated_rms_norm(x, z, w, eps=1e-6),
        [x, gate, weight], 1e-2,
    )


@pytest.mark.parametrize("num_items", [None, 1000])
def test_fast_cross_entropy_matches_hf_over_several_chunks(num_items, monkeypatch):
    vocab = 248320
    monkeypatch.setattr(fast_cross_entropy, "CHUNK_LOGITS_BYTES", 300 * vocab * 2)  # 300-token chunks of bf16 logits
    hidden, weight = _leaves((1024, 256), (vocab, 256))
    weight.data.mul_(0.05)
    labels = torch.randint(0, vocab, (1024,), device=CUDA)
    labels[::7] = -100
    loss = fast_cross_entropy.cross_entropy(hidden, weight, labels, num_items=num_items)
    reference = hf_cross_entropy.cross_entropy(hidden, weight, labels, num_items=num_items)
    grads = torch.autograd.grad(loss, [hidden, weight])
    reference_grads = torch.autograd.grad(reference, [hidden, weight])
    assert abs(loss.item() - reference.item()) / reference.item() < 1e-3
    for a, b in zip(grads, reference_grads):
        assert ((a.float() - b.float()).norm() / b.float().norm()).item() < 2e-2
