"""`activation_checkpointing.mode: auto` on the CPU: the plan chosen from a given memory model
(checked against a brute force written here), the plan as a spec section, op-level checkpointing
(bitwise the same gradients; keeps less than no checkpointing and more than full), the probe's
ordering of what each choice keeps, and a CPU run resolving `auto` in its resolved spec."""

from __future__ import annotations

import copy
import io
import itertools
from pathlib import Path

import pytest
import torch
import yaml

from assembler import build_model, load_spec
from assembler.parallel.activation_checkpoint_plan import BlockCost, MemoryModel, PlanDoesNotFit, plan_checkpointing, plan_section
from assembler.parallel.activation_checkpoint_probe import measure_memory_model
from assembler.data import build_loader
from assembler.parallel.parallelize import iter_blocks, parallelize
from assembler.spec.errors import SpecError
from assembler.train.loop import train

TINY = Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml"
MiB = 2**20

# A 4B-like hybrid at one size: 24 linear layers, 8 full-attention layers, a vision tower. Bytes
# per block and seconds of recompute per block, by choice.
MODEL = MemoryModel(
    fixed_bytes=30_000 * MiB,
    blocks={
        "linear": BlockCost(24, {"none": 900 * MiB, "op_level": 380 * MiB, "full": 40 * MiB},
                            {"none": 0.0, "op_level": 0.004, "full": 0.011}),
        "full": BlockCost(8, {"none": 1100 * MiB, "op_level": 300 * MiB, "full": 40 * MiB},
                          {"none": 0.0, "op_level": 0.003, "full": 0.014}),
        "vision": BlockCost(24, {"none": 60 * MiB, "op_level": 30 * MiB, "full": 5 * MiB},
                            {"none": 0.0, "op_level": 0.001, "full": 0.002}),
    },
)


def _brute_force(model: MemoryModel, budget: float):
    """Every assignment of counts, scored independently of the planner: (seconds, bytes, counts)."""
    per_type = []
    for block_type, cost in model.blocks.items():
        if block_type == "vision":
            splits = [{c: (cost.count if c == chosen else 0) for c in ("none", "op_level", "full")}
                      for chosen in ("none", "op_level", "full")]
        else:
            splits = [{"none": a, "op_level": b, "full": cost.count - a - b}
                      for a in range(cost.count + 1) for b in range(cost.count + 1 - a)]
        per_type.append((block_type, cost, splits))
    best = None
    for combo in itertools.product(*(splits for _, _, splits in per_type)):
        saved = model.fixed_bytes + sum(n * cost.saved_bytes[c] for (_, cost, _), split in zip(per_type, combo) for c, n in split.items())
        seconds = sum(n * cost.recompute_s[c] for (_, cost, _), split in zip(per_type, combo) for c, n in split.items())
        if saved <= budget and (best is None or (seconds, saved) < best[:2]):
            best = (seconds, saved, {t: s for (t, _, _), s in zip(per_type, combo)})
    return best


@pytest.mark.parametrize("budget_gib", [40, 45, 52, 60, 80])
def test_plan_is_the_fastest_that_fits(budget_gib):
    budget = budget_gib * 2**30
    plan = plan_checkpointing(MODEL, budget)
    seconds, saved, counts = _brute_force(MODEL, budget)
    assert plan.peak_bytes <= budget
    assert plan.recompute_s == pytest.approx(seconds)
    assert plan.peak_bytes == pytest.approx(saved)
    assert plan.counts == counts


def test_plan_extremes_and_refusal():
    everything = 30_000 + 24 * 900 + 8 * 1100 + 24 * 60  # MiB with nothing checkpointed
    roomy = plan_checkpointing(MODEL, everything * MiB)
    assert all(counts["none"] == MODEL.blocks[t].count for t, counts in roomy.counts.items())
    assert roomy.recompute_s == 0.0
    tightest = (30_000 + 24 * 40 + 8 * 40 + 24 * 5) * MiB
    full = plan_checkpointing(MODEL, tightest)
    assert all(counts["full"] == MODEL.blocks[t].count for t, counts in full.counts.items())
    with pytest.raises(PlanDoesNotFit, match="over the budget"):
        plan_checkpointing(MODEL, tightest - 1)


def test_plan_as_a_spec_section():
    plan = plan_checkpointing(MODEL, 45 * 2**30)
    layer_types = (["linear"] * 3 + ["full"]) * 8
    section = plan_section(plan, layer_types, placement="inside_compile")
    linear = [i for i, t in enumerate(layer_types) if t == "linear"]
    listed = set(section.get("layers", [])) | set(section.get("op_level", []))
    assert section["mode"] == "selective"
    assert not set(section.get("layers", [])) & set(section.get("op_level", []))
    assert sum(1 for i in linear if i in listed) == 24 - plan.counts["linear"]["none"]
    assert sum(1 for i in section.get("layers", []) if i in linear) == plan.counts["linear"]["full"]


def test_a_planned_section_is_a_valid_spec_that_parallelize_applies():
    tiny_model = MemoryModel(fixed_bytes=0, blocks={
        "linear": BlockCost(3, {"none": 10, "op_level": 4, "full": 1}, {"none": 0, "op_level": 1, "full": 3}),
        "full": BlockCost(1, {"none": 10, "op_level": 4, "full": 1}, {"none": 0, "op_level": 1, "full": 3}),
    })
    plan = plan_checkpointing(tiny_model, 16)  # e.g. linear: 1 none, 2 op_level (or 1 full ...), full: op_level
    section = plan_section(plan, ["linear", "linear", "linear", "full"], placement="inside_compile")
    spec = load_spec(TINY, [f"parallel.activation_checkpointing={yaml.safe_dump(section, default_flow_style=True).strip()}"])
    model = build_model(spec, seed=0)
    parallelize(model, spec)
    text = [block.parallel_policy for _, block, block_type in iter_blocks(model) if block_type != "vision"]
    chosen = ["full" if p.checkpointed else "op_level" if p.op_level else "none" for p in text]
    for block_type, indices in (("linear", [0, 1, 2]), ("full", [3])):
        for choice in ("none", "op_level", "full"):
            assert sum(chosen[i] == choice for i in indices) == plan.counts[block_type][choice]


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_op_level_checkpointing_is_exact_and_keeps_between_none_and_full():
    spec = load_spec(TINY, ["parallel.activation_checkpointing={mode: selective, op_level: [linear, full, vision]}"])
    model = build_model(spec, seed=0)
    reference = copy.deepcopy(model)
    parallelize(model, spec)
    assert all(block.parallel_policy.op_level and not block.parallel_policy.checkpointed for _, block, _ in iter_blocks(model))
    batch = next(iter(build_loader(spec, rank=0, world_size=1)))
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "shift_labels", "pixel_values", "image_grid_thw", "packing")}
    assert batch["pixel_values"] is not None  # the vision blocks run too
    loss, grads = _grads(model, batch)
    ref_loss, ref_grads = _grads(reference, batch)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, ref_grads[name]), name

    measured = measure_memory_model(spec, batch, torch.device("cpu"))
    assert set(measured.blocks) == {"linear", "full", "vision"}
    for block_type, cost in measured.blocks.items():
        kept = cost.saved_bytes
        assert kept["none"] > kept["op_level"] > kept["full"] > 0, (block_type, kept)
        assert cost.recompute_s["none"] == 0.0 <= cost.recompute_s["op_level"] <= cost.recompute_s["full"]
    assert measured.blocks["linear"].count == 3 and measured.blocks["full"].count == 1 and measured.blocks["vision"].count == 2


def test_selective_lists_are_checked():
    with pytest.raises(SpecError, match="full and op-level"):
        load_spec(TINY, ["parallel.activation_checkpointing={mode: selective, layers: [full], op_level: [3]}"])
    with pytest.raises(SpecError, match="only used with mode: auto"):
        load_spec(TINY, ["parallel.activation_checkpointing={mode: full, memory_budget_gib: 40}"])
    with pytest.raises(SpecError, match="only used with mode: selective"):
        load_spec(TINY, ["parallel.activation_checkpointing={mode: full, op_level: [linear]}"])
    with pytest.raises(SpecError, match="full and op-level"):  # the tiny spec's layer 0 is a linear layer
        load_spec(TINY, ["parallel.activation_checkpointing={mode: selective, layers: [0], op_level: [linear]}"])


def test_auto_on_the_cpu_runs_without_checkpointing_and_says_so(tmp_path):
    spec = load_spec(TINY, ["train.steps=1", "train.export_hf=false", "parallel.activation_checkpointing.mode=auto"])
    log = io.StringIO()
    train(spec, output_dir=tmp_path / "run", stream=log)
    assert "activation checkpointing (auto, cpu): no device memory to plan for; no checkpointing" in log.getvalue()
    resolved = yaml.safe_load((tmp_path / "run" / "resolved_spec.yaml").read_text())
    assert resolved["parallel"]["activation_checkpointing"]["mode"] == "none"
