"""LoraLinear and where add_lora_adapters puts it: the update's formula on exact values, step 0
equal to the base, a bf16 base with fp32 adapters, one graph under torch.compile(fullgraph=True),
both text layer types and the vision tower adapted under their HF names, and FSDP2 (a one-rank
gloo group) training fp32 adapters on a bf16 base that stays bitwise unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from assembler import load_spec
from assembler.adapters.lora import add_lora_adapters, initialize_adapters, lora_modules
from assembler.adapters.lora_linear import LoraLinear
from assembler.model.build import build_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"


def _lora(base: nn.Linear, rank: int = 2, alpha: float = 4.0, dtype=torch.float32) -> LoraLinear:
    return LoraLinear(base, rank=rank, alpha=alpha, dropout=0.0, adapter_dtype=dtype)


def test_update_is_alpha_over_rank_times_b_a_x_on_exact_values():
    base = nn.Linear(3, 2)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]]))
        base.bias.copy_(torch.tensor([0.5, -0.5]))
    module = _lora(base, rank=2, alpha=4.0)  # scaling 2
    with torch.no_grad():
        module.lora_A.weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
        module.lora_B.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    # by hand: W x + b = [7.5, 0.5]; A x = [3, 3]; B A x = [3, 9]; times 2 = [6, 18]
    assert torch.equal(module(x), torch.tensor([[13.5, 18.5]]))
    assert module.weight is base.weight and module.bias is base.bias  # the base tensors, not copies


def test_fresh_adapters_leave_the_base_output_bitwise():
    spec = load_spec(TINY, ["ops.backend=hf"])
    model = build_model(spec, seed=0)
    linear = model.model.language_model.layers[3].self_attn.q_proj
    x = torch.randn(5, linear.in_features)
    expected = linear(x)
    add_lora_adapters(model, {"targets": ["*.q_proj"]})
    initialize_adapters(model, seed=0)
    adapted = model.model.language_model.layers[3].self_attn.q_proj
    assert isinstance(adapted, LoraLinear) and adapted.lora_A.weight.abs().sum() > 0
    assert torch.equal(adapted(x), expected)


def test_adapters_cover_both_text_layer_types_and_the_vision_tower_under_hf_names():
    model = build_model(load_spec(TINY), device="meta")
    before = {name for name, _ in model.named_parameters()}
    adapted = add_lora_adapters(model, {"targets": ["*"]})
    after = {name for name, _ in model.named_parameters()}
    assert before <= after  # every base parameter keeps its HF name
    for module in ("model.language_model.layers.0.linear_attn.in_proj_qkv", "model.language_model.layers.0.mlp.down_proj",
                   "model.language_model.layers.3.self_attn.q_proj", "model.visual.blocks.1.attn.proj",
                   "model.visual.merger.linear_fc2"):
        assert module in adapted and {f"{module}.lora_A.weight", f"{module}.lora_B.weight"} <= after
    assert "lm_head" not in adapted  # the loss reads its weight; an adapter there would never run
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == after - before


def test_bf16_base_with_fp32_adapters():
    base = nn.Linear(8, 4, dtype=torch.bfloat16).requires_grad_(False)
    module = _lora(base, dtype=torch.float32)
    nn.init.normal_(module.lora_B.weight)
    out = module(torch.randn(3, 8, dtype=torch.bfloat16))
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert module.lora_A.weight.grad.dtype == torch.float32
    assert module.lora_B.weight.grad.dtype == torch.float32 and module.weight.grad is None


def test_compiles_into_one_graph_with_the_eager_result():
    torch._dynamo.reset()
    module = _lora(nn.Linear(8, 4), rank=2)
    nn.init.normal_(module.lora_B.weight)
    x = torch.randn(3, 8)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    eager_out, compiled_out = module(x), compiled(x)
    assert torch.equal(compiled_out, eager_out)


def test_fsdp2_trains_fp32_adapters_on_a_bf16_base_that_stays_bitwise(single_rank_group):
    from assembler.data import build_loader
    from torch.distributed.device_mesh import init_device_mesh

    from assembler.parallel.distributed import World
    from assembler.train.loop import build_for_world
    from assembler.train.optim import build_lr_schedule, build_optimizer
    from assembler.train.step import training_step

    spec = load_spec(TINY, ["ops.backend=hf", "train.dtype=bfloat16", "parallel.fsdp.param_dtype=bfloat16",
                            "train.tokens_per_step=64", "data.packing.length=64", "train.adapters={rank: 4, targets: ['*']}"])
    world = World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), mesh=init_device_mesh("cpu", (1,)))
    model = build_for_world(spec, world)
    def local(p):  # a DTensor's shard; the fp32-kept parameters are replicated plain tensors
        return p.to_local() if hasattr(p, "to_local") else p

    base = {n: local(p).clone() for n, p in model.named_parameters() if ".lora_" not in n}
    adapters = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    assert {p.dtype for p in adapters.values()} == {torch.float32}
    assert torch.bfloat16 in {p.dtype for n, p in model.named_parameters() if ".lora_" not in n}
    optimizer = build_optimizer(model, spec.train["optimizer"])
    scheduler = build_lr_schedule(optimizer, spec.train["schedule"], 10)
    batch = next(iter(build_loader(spec, rank=0, world_size=1)))
    b_before = {n: local(p).clone() for n, p in adapters.items() if n.endswith("lora_B.weight")}
    training_step(model, optimizer, scheduler, [batch], world=world, grad_clip=1.0)
    training_step(model, optimizer, scheduler, [batch], world=world, grad_clip=1.0)
    assert [n for n, p in model.named_parameters() if ".lora_" not in n and not torch.equal(local(p), base[n])] == []
    assert all(not torch.equal(local(adapters[n]), b) for n, b in b_before.items())
    assert {id(p) for p in optimizer.state} == {id(p) for p in adapters.values()}
    assert len(lora_modules(model)) > 0


@pytest.mark.slow
def test_compiled_and_checkpointed_lora_blocks_train_like_eager(tmp_path):
    """Both text layer types compiled with fullgraph=True (a graph break would raise) inside full
    activation checkpointing, adapters on every linear layer: the losses of eager's to 1e-6
    relative (inductor may fuse fp32 arithmetic differently; measured equal or 1.5e-7)."""
    import io

    from assembler.train.loop import train

    common = ["ops.backend=hf", "train.steps=2", "train.log_every=1", "train.checkpoint.every=0", "train.export_hf=false",
              "train.tokens_per_step=64", "data.packing.length=64", "train.adapters={rank: 4, targets: ['*']}"]
    compiled = ["parallel.compile.linear={enabled: true, fullgraph: true}", "parallel.compile.full={enabled: true, fullgraph: true}",
                "parallel.activation_checkpointing.mode=full"]
    torch._dynamo.reset()
    eager = train(load_spec(TINY, common), output_dir=tmp_path / "eager", stream=io.StringIO()).losses
    fast = train(load_spec(TINY, common + compiled), output_dir=tmp_path / "compiled", stream=io.StringIO()).losses
    assert eager.keys() == fast.keys() == {1, 2}
    assert all(abs(fast[s] - eager[s]) <= 1e-6 * abs(eager[s]) for s in eager), (eager, fast)
