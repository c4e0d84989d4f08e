"""A linear-attention (Gated DeltaNet) decoder layer is bitwise transformers' Qwen3.5.

fp32 and bf16, forward and backward (input and every parameter), batch 2, 100 tokens: two chunks of
the delta rule, the second zero-padded. For bf16 the oracle is the layer with all weights in bf16;
a third case keeps A_log and the gated norm weight in fp32 (the fp32-kept parameters of the spec's
mixed-precision policy) with everything else bf16.
"""

import pytest
import torch
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5DecoderLayer

from blocks.context import TextContext
from blocks.decoder_layer import DecoderLayer
from blocks.gated_deltanet import GatedDeltaNet
from blocks.mlp import SwiGLU
from blocks.norms import RMSNorm
from blocks.ops import resolve_ops
from blocks.packing import PackingContext
from tests.oracle import randomize_parameters_, tiny_text_config

BATCH, SEQ = 2, 100  # > 64 and not a multiple of it
LINEAR_LAYER = 0  # tiny config: linear, linear, linear, full
FP32_KEPT = ("linear_attn.A_log", "linear_attn.norm.weight")


def _our_layer(config) -> DecoderLayer:
    ops = resolve_ops("hf")
    eps = config.rms_norm_eps

    def norm() -> RMSNorm:
        return RMSNorm(config.hidden_size, eps=eps, zero_centered=True, ops=ops)

    return DecoderLayer(
        mixer=GatedDeltaNet(
            hidden_size=config.hidden_size,
            num_key_heads=config.linear_num_key_heads,
            num_value_heads=config.linear_num_value_heads,
            key_head_dim=config.linear_key_head_dim,
            value_head_dim=config.linear_value_head_dim,
            conv_kernel_dim=config.linear_conv_kernel_dim,
            gate_norm_type="default",
            rms_norm_eps=eps,
            ops=ops,
        ),
        mlp=SwiGLU(hidden_size=config.hidden_size, intermediate_size=config.intermediate_size, ops=ops),
        input_layernorm=norm(),
        post_attention_layernorm=norm(),
        layer_type="linear",
    )


def _to_dtype(layer: torch.nn.Module, dtype: torch.dtype, fp32_kept: bool) -> None:
    layer.to(dtype)
    if fp32_kept:
        parameters = dict(layer.named_parameters())
        for name in FP32_KEPT:
            parameters[name].data = parameters[name].data.float()


@pytest.mark.parametrize(
    "dtype, fp32_kept",
    [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)],
    ids=["fp32", "bf16", "bf16-fp32-kept"],
)
def test_linear_attention_layer_is_bitwise_transformers(dtype, fp32_kept):
    config = tiny_text_config()
    assert config.layer_types[LINEAR_LAYER] == "linear_attention"
    reference = randomize_parameters_(Qwen3_5DecoderLayer(config, LINEAR_LAYER), seed=0, std=0.2)
    with torch.no_grad():  # a spread of decay rates, as the reference's init gives (A in [0.01, 16])
        reference.linear_attn.A_log.copy_(torch.linspace(0.01, 16, config.linear_num_value_heads).log())
    ours = _our_layer(config)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in reference.named_parameters()]
    _to_dtype(reference, dtype, fp32_kept)
    _to_dtype(ours, dtype, fp32_kept)

    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(BATCH, SEQ, config.hidden_size, generator=generator).to(dtype)
    grad_out = torch.randn(BATCH, SEQ, config.hidden_size, generator=generator).to(dtype)

    ref_in = hidden.clone().requires_grad_()
    ref_out = reference(ref_in, position_embeddings=None, attention_mask=None)
    ref_out.backward(grad_out)

    our_in = hidden.clone().requires_grad_()
    packing = PackingContext.from_document_lengths([[SEQ]] * BATCH)
    our_out = ours(our_in, TextContext(packing=packing, rotary=None))
    our_out.backward(grad_out)

    assert our_out.dtype == dtype
    assert torch.equal(our_out, ref_out)
    assert torch.equal(our_in.grad, ref_in.grad)
    ref_grads = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        assert parameter.dtype == ref_grads[name].dtype, name
        assert torch.equal(parameter.grad, ref_grads[name].grad), name


def test_parameter_names_and_shapes_are_the_hf_checkpoints():
    config = tiny_text_config()
    reference = Qwen3_5DecoderLayer(config, LINEAR_LAYER).linear_attn
    ours = _our_layer(config).mixer
    assert GatedDeltaNet.hf_attribute == "linear_attn"
    assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in reference.named_parameters()}
    assert isinstance(ours.conv1d, type(reference.conv1d))
    assert torch.equal(ours.dt_bias, torch.ones(config.linear_num_value_heads))
    assert torch.equal(ours.norm.weight, torch.ones(config.linear_value_head_dim))
    assert ((ours.A_log.exp() >= 0.01 - 1e-6) & (ours.A_log.exp() <= 16 + 1e-5)).all()


def test_zero_centered_gate_norm_uses_one_plus_weight():
    config = tiny_text_config()
    ops = resolve_ops("hf")
    kwargs = dict(
        hidden_size=config.hidden_size, num_key_heads=2, num_value_heads=4, key_head_dim=16, value_head_dim=16,
        conv_kernel_dim=4, rms_norm_eps=1e-6, ops=ops,
    )
    default = randomize_parameters_(GatedDeltaNet(gate_norm_type="default", **kwargs), seed=3)
    centered = GatedDeltaNet(gate_norm_type="zero_centered", **kwargs)
    assert torch.equal(centered.norm.weight, torch.zeros(16))  # starts at the identity scale
    centered.load_state_dict(default.state_dict())
    with torch.no_grad():
        centered.norm.weight.sub_(1.0)  # stores w - 1
    hidden = torch.randn(1, 10, config.hidden_size)
    ctx = TextContext(packing=PackingContext.from_document_lengths([[10]]), rotary=None)
    torch.testing.assert_close(centered(hidden, ctx), default(hidden, ctx), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="gate_norm_type"):
        GatedDeltaNet(gate_norm_type="zero-centered", **kwargs)
