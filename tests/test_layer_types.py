"""Open layer types (issue 13): a spec declares any number of named layer types, each a mixer and an
MLP; build, compile and checkpointing policies, FLOPs and validation follow the names; an HF
Qwen3.5 export refuses what transformers' Qwen3.5 cannot express."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from assembler import build_model, hf_config_from_spec, load_spec
from assembler.parallel.parallelize import iter_blocks, parallelize
from assembler.spec.errors import SpecError
from assembler.train.loop import train
from assembler.train.metrics import attention_flops_per_token

TINY = Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml"
# A third layer type: Gated DeltaNet with a wider MLP, at layer 2.
WIDE = [
    "model.text.layers=[linear, linear, wide, full]",
    "model.text.layer_types.wide={mixer: {block: gated_deltanet, num_key_heads: 2, num_value_heads: 4, "
    "key_head_dim: 16, value_head_dim: 16}, mlp: {block: swiglu, intermediate_size: 256}}",
]


def test_a_third_layer_type_builds_with_its_own_settings():
    spec = load_spec(TINY, WIDE)
    model = build_model(spec, seed=0)
    layers = model.model.language_model.layers
    assert [layer.layer_type for layer in layers] == ["linear", "linear", "wide", "full"]
    widths = [layer.mlp.gate_proj.out_features for layer in layers]
    assert widths == [128, 128, 256, 128]
    # Every block type gets a compile policy in the resolved spec, the new one included.
    assert set(spec.parallel["compile"]) == {"linear", "full", "wide", "vision"}


def test_policies_are_keyed_by_the_layer_type_names():
    spec = load_spec(TINY, [*WIDE, "parallel.compile.wide={enabled: true, fullgraph: false}",
                            "parallel.activation_checkpointing={mode: selective, layers: [wide]}"])
    model = build_model(spec, seed=0)
    parallelize(model, spec)
    policies = {name: block.parallel_policy for name, block, _ in iter_blocks(model)}
    wide = policies["model.language_model.layers.2"]
    assert wide.block_type == "wide" and wide.checkpointed and wide.compiled and not wide.fullgraph
    others = [p for name, p in policies.items() if name != "model.language_model.layers.2"]
    assert not any(p.checkpointed for p in others)


def test_unknown_block_type_names_are_refused_with_a_suggestion():
    with pytest.raises(SpecError, match=r"parallel\.compile\.wdie: 'wdie' is not a block type — did you mean 'wide'\?"):
        load_spec(TINY, [*WIDE, "parallel.compile.wdie={enabled: true}"])
    with pytest.raises(SpecError, match=r"activation_checkpointing\.layers\[0\]: 'wdie' is not a block type"):
        load_spec(TINY, [*WIDE, "parallel.activation_checkpointing={mode: selective, layers: [wdie]}"])
    with pytest.raises(SpecError, match=r"model\.text\.layer_types: 'vision' is not allowed here — .*vision tower"):
        load_spec(TINY, ["model.text.layer_types.vision={mixer: {block: gated_attention, num_attention_heads: 4, num_key_value_heads: 2, "
                         "head_dim: 32}, mlp: {block: swiglu, intermediate_size: 128}}"])


def test_attention_flops_follow_the_mixer_not_the_name():
    spec = load_spec(TINY, [
        "model.text.layers=[linear, linear, attn, attn]",
        "model.text.layer_types={linear: {mixer: {block: gated_deltanet, num_key_heads: 2, num_value_heads: 4, "
        "key_head_dim: 16, value_head_dim: 16}, mlp: {block: swiglu, intermediate_size: 128}}, "
        "attn: {mixer: {block: gated_attention, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 32}, "
        "mlp: {block: swiglu, intermediate_size: 128}}}",
        "parallel.compile={}",
    ])
    assert attention_flops_per_token(spec.model["text"], 100) == 2 * 12 * 4 * 32 * 100  # two attention layers


def test_a_third_layer_type_trains_and_has_no_hf_qwen3_5_export(tmp_path):
    spec = load_spec(TINY, [*WIDE, "train.steps=2", "train.export_hf=false"])
    result = train(spec, output_dir=tmp_path / "run", stream=io.StringIO())
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(loss)) for loss in result.losses.values())
    with pytest.raises(SpecError, match=r"layer types \['linear', 'wide'\] all use 'gated_deltanet'"):
        hf_config_from_spec(spec)
