"""The `hf` attention keeps documents of a packed row apart, and packed equals one-document-per-row."""

import pytest
import torch

from blocks.context import TextContext
from blocks.gated_attention import GatedAttention
from blocks.ops import resolve_ops
from blocks.ops.hf_attention import attention
from blocks.packing import PackingContext
from blocks.rope import TextRotaryEmbedding
from tests.oracle import randomize_parameters_

HQ, HKV, D = 4, 2, 8
LENGTHS = [5, 4, 6]  # three documents in one row
SCALE = D**-0.5


def _qkv(batch: int, seq: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, seq, HQ, D, generator=generator),
        torch.randn(batch, seq, HKV, D, generator=generator),
        torch.randn(batch, seq, HKV, D, generator=generator),
    )


def _document_slices(lengths: list[int]) -> list[slice]:
    bounds = torch.tensor([0, *lengths]).cumsum(0).tolist()
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _perturb_document(tensors, piece: slice):
    out = []
    for t in tensors:
        t = t.clone()
        t[:, piece] += 10.0
        out.append(t)
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_perturbing_one_document_leaves_the_others_exactly_unchanged(causal):
    first, middle, last = _document_slices(LENGTHS)
    q, k, v = _qkv(1, sum(LENGTHS))
    perturbed = _perturb_document((q, k, v), middle)

    packed = PackingContext.from_document_lengths([LENGTHS])
    before = attention(q, k, v, scale=SCALE, causal=causal, ctx=packed)
    after = attention(*perturbed, scale=SCALE, causal=causal, ctx=packed)
    assert not torch.equal(before[:, middle], after[:, middle])  # the perturbation reached its own document
    assert torch.equal(before[:, last], after[:, last])
    assert torch.equal(before[:, first], after[:, first])

    # A context that claims one document lets the perturbation leak: the check above can fail.
    leaky = PackingContext.from_document_lengths([[sum(LENGTHS)]])
    leaky_before = attention(q, k, v, scale=SCALE, causal=causal, ctx=leaky)
    leaky_after = attention(*perturbed, scale=SCALE, causal=causal, ctx=leaky)
    assert not torch.equal(leaky_before[:, last], leaky_after[:, last])


def test_gated_attention_layer_keeps_documents_apart():
    hidden_size, lengths = 32, LENGTHS
    layer = GatedAttention(
        hidden_size=hidden_size, num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D, qk_norm=True, output_gate=True,
        qk_norm_type="zero_centered", rms_norm_eps=1e-6, ops=resolve_ops("hf"),
    )
    randomize_parameters_(layer, seed=3, std=0.3)
    rotary = TextRotaryEmbedding(head_dim=D, partial_rotary_factor=1.0, theta=1e4, mrope_section=[2, 1, 1], mrope_interleaved=True)
    packing = PackingContext.from_document_lengths([lengths])
    first, middle, last = _document_slices(lengths)
    hidden = torch.randn(1, sum(lengths), hidden_size, generator=torch.Generator().manual_seed(4))
    (perturbed,) = _perturb_document((hidden,), middle)

    def run(x):
        return layer(x, TextContext(packing=packing, rotary=rotary(x, packing.position_ids)))

    before, after = run(hidden), run(perturbed)
    assert not torch.equal(before[:, middle], after[:, middle])
    assert torch.equal(before[:, first], after[:, first]) and torch.equal(before[:, last], after[:, last])


@pytest.mark.parametrize("causal", [True, False])
def test_packed_rows_equal_documents_run_separately(causal):
    rows = [[5, 4, 6], [3, 12]]
    q, k, v = _qkv(2, 15, seed=1)
    packed = attention(q, k, v, scale=SCALE, causal=causal, ctx=PackingContext.from_document_lengths(rows))
    for row, lengths in enumerate(rows):
        for piece, length in zip(_document_slices(lengths), lengths):
            alone = attention(
                q[row : row + 1, piece], k[row : row + 1, piece], v[row : row + 1, piece],
                scale=SCALE, causal=causal, ctx=PackingContext.from_document_lengths([[length]]),
            )
            torch.testing.assert_close(packed[row : row + 1, piece], alone, rtol=1e-6, atol=0)


def test_causal_attention_does_not_look_ahead():
    q, k, v = _qkv(1, 6, seed=2)
    ctx = PackingContext.from_document_lengths([[6]])
    before = attention(q, k, v, scale=SCALE, causal=True, ctx=ctx)
    k2, v2 = k.clone(), v.clone()
    k2[:, 4:] += 5.0
    v2[:, 4:] += 5.0
    after = attention(q, k2, v2, scale=SCALE, causal=True, ctx=ctx)
    assert torch.equal(before[:, :4], after[:, :4]) and not torch.equal(before[:, 4:], after[:, 4:])


def test_context_that_does_not_fit_the_batch_is_an_error():
    q, k, v = _qkv(1, 6)
    with pytest.raises(ValueError, match="covers 5 tokens"):
        attention(q, k, v, scale=SCALE, causal=True, ctx=PackingContext.from_document_lengths([[5]]))
