"""No state crosses a document boundary in the Gated DeltaNet: not the conv1d window, not the
delta-rule state. Each mechanism is checked alone (with a control showing the check can fail), then
the whole mixer: packed rows equal their documents run one at a time."""

import pytest
import torch

from blocks.context import TextContext
from blocks.gated_deltanet import GatedDeltaNet
from blocks.ops import resolve_ops
from blocks.ops.hf_conv1d import conv1d
from blocks.ops.hf_delta_rule import delta_rule
from blocks.packing import PackingContext
from tests.oracle import randomize_parameters_

# Three documents in one row. Read as one sequence, the second starts mid-chunk (the delta rule's
# chunks are 64 tokens) and the third spans a chunk boundary, so a leak would have somewhere to go.
LENGTHS = [70, 30, 100]
SEQ = sum(LENGTHS)
HK, HV, DK, DV, CHANNELS, KERNEL = 2, 4, 16, 8, 24, 4


def _document_slices(lengths: list[int]) -> list[slice]:
    bounds = torch.tensor([0, *lengths]).cumsum(0).tolist()
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


FIRST, SECOND, THIRD = _document_slices(LENGTHS)
PACKED = PackingContext.from_document_lengths([LENGTHS])
LEAKY = PackingContext.from_document_lengths([[SEQ]])  # claims the row is one document


def _delta_rule_inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(1, SEQ, HK, DK, generator=generator)
    k = torch.randn(1, SEQ, HK, DK, generator=generator)
    v = torch.randn(1, SEQ, HV, DV, generator=generator)
    g = -0.05 * torch.rand(1, SEQ, HV, generator=generator)  # slow decay: a leaked state would last
    beta = torch.rand(1, SEQ, HV, generator=generator)
    return q, k, v, g, beta


def _perturb_first_document(q, k, v, g, beta):
    q, k, v, g, beta = (x.clone() for x in (q, k, v, g, beta))
    q[:, FIRST] += 3.0
    k[:, FIRST] += 3.0
    v[:, FIRST] += 10.0
    g[:, FIRST] -= 0.5
    beta[:, FIRST] = 1.0 - beta[:, FIRST]
    return q, k, v, g, beta


def test_conv1d_window_does_not_cross_a_document_boundary():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, SEQ, CHANNELS, generator=generator)
    weight = torch.randn(CHANNELS, KERNEL, generator=generator)
    perturbed = x.clone()
    perturbed[:, FIRST] += 10.0

    before, after = conv1d(x, weight, ctx=PACKED), conv1d(perturbed, weight, ctx=PACKED)
    assert not torch.equal(before[:, FIRST], after[:, FIRST])
    assert torch.equal(before[:, SECOND], after[:, SECOND])
    assert torch.equal(before[:, THIRD], after[:, THIRD])

    # Control: with a context that claims one document, the window carries the perturbation into
    # the second document's first K - 1 tokens (and no further).
    leaky_before, leaky_after = conv1d(x, weight, ctx=LEAKY), conv1d(perturbed, weight, ctx=LEAKY)
    second_start = SECOND.start
    assert not torch.equal(leaky_before[:, second_start : second_start + KERNEL - 1], leaky_after[:, second_start : second_start + KERNEL - 1])
    assert torch.equal(leaky_before[:, second_start + KERNEL - 1 :], leaky_after[:, second_start + KERNEL - 1 :])


def test_delta_rule_state_does_not_cross_a_document_boundary():
    inputs = _delta_rule_inputs()
    perturbed = _perturb_first_document(*inputs)

    before, after = delta_rule(*inputs, ctx=PACKED), delta_rule(*perturbed, ctx=PACKED)
    assert not torch.equal(before[:, FIRST], after[:, FIRST])
    assert torch.equal(before[:, SECOND], after[:, SECOND])
    assert torch.equal(before[:, THIRD], after[:, THIRD])

    # Control: read as one document, the first document's state reaches all later tokens.
    leaky_before, leaky_after = delta_rule(*inputs, ctx=LEAKY), delta_rule(*perturbed, ctx=LEAKY)
    assert not torch.equal(leaky_before[:, SECOND], leaky_after[:, SECOND])
    assert (leaky_before[:, THIRD] - leaky_after[:, THIRD]).abs().amax() > 1e-3


def _mixer(seed: int = 3) -> GatedDeltaNet:
    mixer = GatedDeltaNet(
        hidden_size=32, num_key_heads=HK, num_value_heads=HV, key_head_dim=DK, value_head_dim=DV,
        conv_kernel_dim=KERNEL, gate_norm_type="default", rms_norm_eps=1e-6, ops=resolve_ops("hf"),
    )
    randomize_parameters_(mixer, seed=seed, std=0.3)
    with torch.no_grad():
        mixer.A_log.copy_(torch.linspace(0.01, 2.0, HV).log())  # slow-to-fast decay per head
    return mixer


def _context(lengths_per_row: list[list[int]]) -> TextContext:
    return TextContext(packing=PackingContext.from_document_lengths(lengths_per_row), rotary=None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixer_keeps_documents_apart(dtype):
    mixer = _mixer().to(dtype)
    hidden = torch.randn(1, SEQ, 32, generator=torch.Generator().manual_seed(4)).to(dtype)
    perturbed = hidden.clone()
    perturbed[:, FIRST] += 5.0

    before, after = mixer(hidden, _context([LENGTHS])), mixer(perturbed, _context([LENGTHS]))
    assert not torch.equal(before[:, FIRST], after[:, FIRST])
    assert torch.equal(before[:, SECOND], after[:, SECOND]) and torch.equal(before[:, THIRD], after[:, THIRD])

    leaky_before, leaky_after = mixer(hidden, _context([[SEQ]])), mixer(perturbed, _context([[SEQ]]))
    assert not torch.equal(leaky_before[:, SECOND], leaky_after[:, SECOND])


def test_packed_rows_equal_documents_run_alone():
    rows = [LENGTHS, [1, 130, 69]]  # a one-token document, and one crossing two chunk boundaries
    mixer = _mixer()
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(len(rows), SEQ, 32, generator=generator, requires_grad=True)
    grad_out = torch.randn(len(rows), SEQ, 32, generator=generator)

    packed = mixer(hidden, _context(rows))
    (packed_grad,) = torch.autograd.grad(packed, hidden, grad_out)
    for row, lengths in enumerate(rows):
        for piece, length in zip(_document_slices(lengths), lengths):
            alone_in = hidden[row : row + 1, piece].detach().requires_grad_()
            alone = mixer(alone_in, _context([[length]]))
            (alone_grad,) = torch.autograd.grad(alone, alone_in, grad_out[row : row + 1, piece])
            where = f"row {row}, tokens {piece.start}:{piece.stop}"
            _assert_equal_to_fp32_rounding(packed[row : row + 1, piece], alone, where)
            _assert_equal_to_fp32_rounding(packed_grad[row : row + 1, piece], alone_grad, f"{where} (input gradient)")
    # Control: the same rows read as one document each are far from that.
    unpacked = mixer(hidden, _context([[SEQ]] * len(rows)))
    assert (unpacked - packed).abs().amax() > 1e-2


def _assert_equal_to_fp32_rounding(actual: torch.Tensor, expected: torch.Tensor, where: str) -> None:
    # Relative to the document's largest value: a batch of other shape may round differently (matmul
    # blocking, summation order), and a gradient that cancels to ~0 makes element-wise relative
    # errors meaningless. A leak changes outputs by orders of magnitude more (see the tests above).
    error = (actual - expected).abs().amax().item()
    scale = expected.abs().amax().item()
    assert error <= 1e-6 * scale, f"{where}: packed differs from alone by {error:.3g} (scale {scale:.3g})"

def test_context_that_does_not_fit_the_batch_is_an_error():
    q, k, v, g, beta = _delta_rule_inputs()
    with pytest.raises(ValueError, match="packing context describes a \\(1, 5\\) batch"):
        delta_rule(q, k, v, g, beta, ctx=PackingContext.from_document_lengths([[5]]))
