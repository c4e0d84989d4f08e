"""A full-attention decoder layer and the text rotary embedding are bitwise transformers' Qwen3.5 (eager).

fp32 and bf16, forward and backward, batch 2, mRoPE positions that differ per axis. For bf16 the
oracle is the reference as from_pretrained(dtype=bfloat16) builds it: layer weights in bf16, rotary
inv_freq kept fp32 (cos/sin computed in fp32, then cast to bf16, as the text model does).
"""

import pytest
import torch
from transformers.masking_utils import create_causal_mask
from transformers import Qwen2VLTextConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5DecoderLayer, Qwen3_5TextRotaryEmbedding

from blocks.context import TextContext
from blocks.decoder_layer import DecoderLayer
from blocks.gated_attention import GatedAttention
from blocks.mlp import SwiGLU
from blocks.norms import RMSNorm
from blocks.ops import resolve_ops
from blocks.packing import PackingContext
from blocks.rope import TextRotaryEmbedding
from tests.oracle import randomize_parameters_, reference_position_embeddings, tiny_text_config

BATCH, SEQ = 2, 9
FULL_LAYER = 3  # tiny config: linear, linear, linear, full


def _our_rotary(config) -> TextRotaryEmbedding:
    rope = config.rope_parameters
    return TextRotaryEmbedding(
        head_dim=config.head_dim,
        partial_rotary_factor=rope["partial_rotary_factor"],
        theta=rope["rope_theta"],
        mrope_section=rope["mrope_section"],
        mrope_interleaved=rope["mrope_interleaved"],
    )


def _our_layer(config) -> DecoderLayer:
    ops = resolve_ops("hf")
    eps = config.rms_norm_eps

    def norm() -> RMSNorm:
        return RMSNorm(config.hidden_size, eps=eps, zero_centered=True, ops=ops)

    return DecoderLayer(
        mixer=GatedAttention(
            hidden_size=config.hidden_size,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            qk_norm=True,
            output_gate=True,
            qk_norm_type="zero_centered",
            rms_norm_eps=eps,
            ops=ops,
        ),
        mlp=SwiGLU(hidden_size=config.hidden_size, intermediate_size=config.intermediate_size, ops=ops),
        input_layernorm=norm(),
        post_attention_layernorm=norm(),
        layer_type="full",
    )


def _mrope_positions(batch: int = BATCH, seq: int = SEQ, offset: int = 0) -> torch.Tensor:
    """[3, B, T] positions whose three axes differ (an image-like grid inside text)."""
    t = torch.arange(seq) + offset
    positions = torch.stack([t, t // 2 + 3, (t * 5) % 7 + 1])  # temporal, height, width
    return torch.stack([positions + row for row in range(batch)], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_attention_layer_is_bitwise_transformers(dtype):
    config = tiny_text_config()
    assert config.layer_types[FULL_LAYER] == "full_attention"
    reference = randomize_parameters_(Qwen3_5DecoderLayer(config, FULL_LAYER), seed=0, std=0.2)
    ours = _our_layer(config)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in reference.named_parameters()]
    reference.to(dtype)
    rotary = _our_rotary(config)
    ours.to(dtype), rotary.to(dtype)

    positions = _mrope_positions()
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(BATCH, SEQ, config.hidden_size, generator=generator).to(dtype)
    grad_out = torch.randn(BATCH, SEQ, config.hidden_size, generator=generator).to(dtype)

    ref_in = hidden.clone().requires_grad_()
    mask = create_causal_mask(config=config, inputs_embeds=ref_in, attention_mask=None, cache=None, position_ids=None)
    ref_out = reference(ref_in, position_embeddings=reference_position_embeddings(config, positions, dtype), attention_mask=mask)
    ref_out.backward(grad_out)

    our_in = hidden.clone().requires_grad_()
    packing = PackingContext.from_document_lengths([[SEQ]] * BATCH, position_ids=positions)
    our_out = ours(our_in, TextContext(packing=packing, rotary=rotary(our_in, positions)))
    our_out.backward(grad_out)

    assert our_out.dtype == dtype
    assert torch.equal(our_out, ref_out)
    assert torch.equal(our_in.grad, ref_in.grad)
    ref_grads = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        assert torch.equal(parameter.grad, ref_grads[name].grad), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_text_rotary_is_bitwise_transformers(dtype):
    config = tiny_text_config()
    rotary = _our_rotary(config).to(dtype)  # the cast must leave inv_freq fp32
    assert rotary.inv_freq.dtype == torch.float32
    assert torch.equal(rotary.inv_freq, Qwen3_5TextRotaryEmbedding(config).inv_freq)
    positions = _mrope_positions(offset=3000)  # long positions: where a bf16 inv_freq would show
    x = torch.empty(0, dtype=dtype)
    cos, sin = rotary(x, positions)
    ref_cos, ref_sin = reference_position_embeddings(config, positions, dtype)
    assert cos.shape == (BATCH, SEQ, 8) and cos.dtype == dtype
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


def test_rotary_with_bf16_inv_freq_would_fail_the_parity_test():
    # Shows the fp32-inv_freq rule matters (and that the rotary test can fail).
    config = tiny_text_config()
    rotary = _our_rotary(config)
    rotary.inv_freq = rotary.inv_freq.to(torch.bfloat16).float()
    positions = _mrope_positions(offset=3000)
    cos, _ = rotary(torch.empty(0), positions)
    ref_cos, _ = reference_position_embeddings(config, positions, torch.float32)
    assert not torch.equal(cos, ref_cos)


def test_interleaved_sections_use_each_axis():
    # Frequency i takes axis i mod 3 while that axis has frequencies left ([2, 1, 1] -> t, h, w, t).
    rotary = TextRotaryEmbedding(head_dim=32, partial_rotary_factor=0.25, theta=10000.0, mrope_section=[2, 1, 1], mrope_interleaved=True)
    positions = torch.tensor([5, 7, 11]).view(3, 1, 1)
    cos, _ = rotary(torch.empty(0), positions)
    angles = torch.stack([positions[i, 0, 0] * rotary.inv_freq[f] for f, i in enumerate([0, 1, 2, 0])])
    assert torch.equal(cos[0, 0], torch.cat([angles.cos(), angles.cos()]))


def test_contiguous_sections_match_qwen2_vl():
    # mrope_interleaved=false: Qwen2-VL's contiguous [t | h | w] blocks (full rotary there, head_dim 8).
    section = [2, 1, 1]
    qwen2_vl = Qwen2VLTextConfig(
        hidden_size=32, num_attention_heads=4, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
    )
    reference = Qwen2VLRotaryEmbedding(qwen2_vl)
    rotary = TextRotaryEmbedding(head_dim=8, partial_rotary_factor=1.0, theta=10000.0, mrope_section=section, mrope_interleaved=False)
    positions = _mrope_positions()
    ours, theirs = rotary(torch.empty(0), positions), reference(torch.empty(0), positions)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_rotary_rejects_sections_that_do_not_cover_the_rotary_dim():
    with pytest.raises(ValueError, match="mrope_section"):
        TextRotaryEmbedding(head_dim=32, partial_rotary_factor=0.25, theta=1e4, mrope_section=[2, 2, 1], mrope_interleaved=True)
