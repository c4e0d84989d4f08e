"""The `hf` RMS norms are bitwise transformers' (Qwen3.5 zero-centered and gated; Qwen3 default), forward and backward."""

import pytest
import torch

from blocks.norms import RMSNorm
from blocks.ops import resolve_ops
from blocks.ops.hf_norms import gated_rms_norm, rms_norm
from tests.oracle import randomize_parameters_
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5RMSNorm, Qwen3_5RMSNormGated

EPS = 1e-6
DTYPES = [torch.float32, torch.bfloat16]


def _input(dtype, *shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 3).to(dtype).requires_grad_()


def _forward_backward(fn, *inputs):
    out = fn(*inputs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.dtype)
    grads = torch.autograd.grad(out, inputs, grad_out)
    return out, grads


def _assert_same(ours, theirs):
    (out, grads), (ref, ref_grads) = ours, theirs
    assert out.dtype == ref.dtype
    assert torch.equal(out, ref)
    for grad, ref_grad in zip(grads, ref_grads):
        assert torch.equal(grad, ref_grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_centered_rms_norm_is_transformers_qwen3_5(dtype):
    reference = randomize_parameters_(Qwen3_5RMSNorm(64, eps=EPS), seed=1).to(dtype)
    ours = RMSNorm(64, eps=EPS, zero_centered=True, ops=resolve_ops("hf")).to(dtype)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = _input(dtype, 2, 5, 64)
    _assert_same(
        _forward_backward(lambda x, w: rms_norm(x, w, eps=EPS, zero_centered=True), x, ours.weight),
        _forward_backward(lambda x, w: reference(x), x, reference.weight),
    )
    assert torch.equal(ours(x), reference(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_rms_norm_is_transformers_qwen3(dtype):
    reference = randomize_parameters_(Qwen3RMSNorm(64, eps=EPS), seed=2).to(dtype)
    x = _input(dtype, 2, 5, 64)
    _assert_same(
        _forward_backward(lambda x, w: rms_norm(x, w, eps=EPS, zero_centered=False), x, reference.weight),
        _forward_backward(lambda x, w: reference(x), x, reference.weight),
    )


@pytest.mark.parametrize(
    "dtype, weight_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)]
)
def test_gated_rms_norm_is_transformers_qwen3_5(dtype, weight_dtype):
    # bf16 activations with an fp32 weight is the mixed-precision case (the gated norm weight is fp32-kept).
    reference = randomize_parameters_(Qwen3_5RMSNormGated(16, eps=EPS), seed=3).to(weight_dtype)
    x, gate = _input(dtype, 2, 5, 4, 16, seed=0), _input(dtype, 2, 5, 4, 16, seed=1)
    _assert_same(
        _forward_backward(lambda x, g, w: gated_rms_norm(x, g, w, eps=EPS), x, gate, reference.weight),
        _forward_backward(lambda x, g, w: reference(x, g), x, gate, reference.weight),
    )


def test_norm_block_initialisation_and_flavours_differ():
    ops = resolve_ops("hf")
    zero_centered, default = RMSNorm(8, eps=EPS, zero_centered=True, ops=ops), RMSNorm(8, eps=EPS, zero_centered=False, ops=ops)
    assert torch.equal(zero_centered.weight, torch.zeros(8)) and torch.equal(default.weight, torch.ones(8))
    x = torch.randn(3, 8)
    # Same effective scale (1 + 0 == 1): same output; a shifted weight must then tell them apart.
    assert torch.equal(zero_centered(x), default(x))
    with torch.no_grad():
        zero_centered.weight.fill_(0.5)
        default.weight.fill_(0.5)
    assert not torch.allclose(zero_centered(x), default(x))
