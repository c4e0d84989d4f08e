"""parallelize on CPU: which blocks get checkpointed and compiled, that names and results are
unchanged by checkpointing, and that FSDP2 at world size 1 keeps the fp32-kept parameters fp32
while everything else computes in the low-precision param_dtype."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from assembler import build_model, load_spec
from assembler.parallel.parallelize import blocks_to_checkpoint, iter_blocks, parallelize, replicated_parameters

TINY = Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml"


def _tiny(*overrides: str):
    spec = load_spec(TINY, list(overrides))
    return spec, build_model(spec, seed=0)


def _loss_and_grads(model, ids, labels):
    model.zero_grad()
    loss = model(ids, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpoint_selection_by_mode_type_and_index():
    _, model = _tiny()
    blocks = list(iter_blocks(model))
    names = [name for name, _, _ in blocks]
    assert names[:2] == ["model.visual.blocks.0", "model.visual.blocks.1"]  # vision runs first
    assert blocks_to_checkpoint(blocks, {"mode": "none"}) == set()
    assert blocks_to_checkpoint(blocks, {"mode": "full"}) == set(names)
    assert blocks_to_checkpoint(blocks, {"mode": "selective", "layers": ["full", 0]}) == {
        "model.language_model.layers.3", "model.language_model.layers.0"
    }
    assert blocks_to_checkpoint(blocks, {"mode": "selective", "layers": ["vision"]}) == set(names[:2])
    with pytest.raises(ValueError, match="out of range"):
        blocks_to_checkpoint(blocks, {"mode": "selective", "layers": [4]})
    with pytest.raises(ValueError, match="needs `layers`"):
        blocks_to_checkpoint(blocks, {"mode": "selective"})


def test_checkpointing_keeps_names_loss_and_gradients():
    spec, model = _tiny("parallel.activation_checkpointing.mode=full")
    reference = copy.deepcopy(model)
    names_before = [n for n, _ in model.named_parameters()]
    parallelize(model, spec)
    assert [n for n, _ in model.named_parameters()] == names_before
    assert all(block.parallel_policy.checkpointed for _, block, _ in iter_blocks(model))

    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(1))
    loss, grads = _loss_and_grads(model, ids, labels)
    ref_loss, ref_grads = _loss_and_grads(reference, ids, labels)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, ref_grads[name]), name


def test_compile_policy_per_block_type():
    spec, model = _tiny(
        "parallel.compile.linear={enabled: true, fullgraph: true}",
        "parallel.compile.full={enabled: true, fullgraph: false}",
        "parallel.compile.vision={enabled: false}",
    )
    parallelize(model, spec)  # compiles lazily: nothing runs here
    by_type = {}
    for _, block, block_type in iter_blocks(model):
        by_type.setdefault(block_type, set()).add((block.parallel_policy.compiled, block.parallel_policy.fullgraph))
    assert by_type == {"linear": {(True, True)}, "full": {(True, False)}, "vision": {(False, False)}}
    layer = model.model.language_model.layers[0]
    assert "forward" in vars(layer)  # an instance-level compiled forward, not a wrapper module


def test_compile_mode_reaches_torch_compile(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: calls.append(options) or fn)
    spec, model = _tiny(
        "parallel.compile.linear={enabled: true, mode: max-autotune-no-cudagraphs}",
        "parallel.compile.full={enabled: true}",
    )
    parallelize(model, spec)
    modes = {(block_type, block.parallel_policy.compile_mode) for _, block, block_type in iter_blocks(model) if block_type != "vision"}
    assert modes == {("linear", "max-autotune-no-cudagraphs"), ("full", None)}
    assert sorted(str(call["mode"]) for call in calls) == ["None"] + ["max-autotune-no-cudagraphs"] * 3


def test_fsdp_world_size_one_keeps_fp32_params_fp32(single_rank_group):
    spec, model = _tiny("parallel.fsdp.param_dtype=bfloat16")
    parallelize(model, spec)
    layer = model.model.language_model.layers[0]
    assert layer.parallel_policy.replicated == ["linear_attn.A_log", "linear_attn.norm.weight"]
    assert model.model.language_model.layers[3].parallel_policy.replicated == []
    # Left out of FSDP2's units: whole fp32 tensors, not sharded DTensors.
    assert type(layer.linear_attn.A_log) is torch.nn.Parameter and layer.linear_attn.A_log.dtype == torch.float32
    assert replicated_parameters(model) == [
        p for name, p in model.named_parameters() if name.endswith(("linear_attn.A_log", "linear_attn.norm.weight"))
    ]

    seen = {}

    def record(name, tensor_of):
        return lambda module, args: seen.__setitem__(name, tensor_of(module).dtype)

    # Registered after FSDP's own pre-hooks, so they see the gathered (unsharded) parameters.
    layer.linear_attn.register_forward_pre_hook(record("A_log", lambda m: m.A_log))
    layer.linear_attn.register_forward_pre_hook(record("dt_bias", lambda m: m.dt_bias))
    layer.linear_attn.norm.register_forward_pre_hook(record("gate_norm", lambda m: m.weight))
    layer.linear_attn.in_proj_qkv.register_forward_pre_hook(record("in_proj_qkv", lambda m: m.weight))
    layer.mlp.register_forward_pre_hook(record("mlp", lambda m: m.up_proj.weight))

    ids = torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(0))
    loss = model(ids, labels=ids).loss
    loss.backward()
    # dt_bias is not kept: it computes in param_dtype like every parameter the spec does not list.
    assert seen == {"A_log": torch.float32, "dt_bias": torch.bfloat16, "gate_norm": torch.float32,
                    "in_proj_qkv": torch.bfloat16, "mlp": torch.bfloat16}
    assert torch.isfinite(loss)
    assert layer.linear_attn.A_log.grad is not None and layer.linear_attn.A_log.grad.dtype == torch.float32


def test_fsdp_fp32_params_keep_every_block_fullgraph(single_rank_group):
    spec, model = _tiny(
        "parallel.fsdp.param_dtype=bfloat16",
        "parallel.compile.linear={enabled: true, fullgraph: true}",
        "parallel.compile.full={enabled: true, fullgraph: true}",
    )
    parallelize(model, spec)
    policies = {block_type: block.parallel_policy for _, block, block_type in iter_blocks(model)}
    assert policies["linear"].replicated  # holds A_log, yet compiles as one graph
    assert policies["linear"].fullgraph is True
    assert policies["full"].fullgraph is True


def test_fsdp_fp32_params_trace_as_one_graph(single_rank_group, monkeypatch):
    """Dynamo traces a linear-attention block holding replicated fp32 parameters under FSDP2 with
    fullgraph=True (a graph break raises). The eager backend: tracing is what is checked, not Inductor."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compile_(fn, **{**options, "backend": "eager"}))
    torch._dynamo.reset()
    spec, model = _tiny(
        "parallel.fsdp.param_dtype=bfloat16",
        "parallel.compile.linear={enabled: true, fullgraph: true}",
    )
    parallelize(model, spec)
    ids = torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(0))
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.model.language_model.layers[0].linear_attn.A_log.grad is not None
