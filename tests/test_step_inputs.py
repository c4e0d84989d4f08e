"""What the training step hands the model: the collator's row with every tensor on the device,
and the vision layouts the collator made on the host equal to those the tower would make itself
(so the step's tower reads no GPU tensor back; tests/gpu/test_host_syncs.py checks the waits)."""

import dataclasses
from pathlib import Path

import torch

from assembler import build_model, load_spec
from assembler.bench.workload import ImageSpec, synthetic_row
from assembler.train.step import MODEL_INPUTS, to_device
from blocks.packing import PackingContext
from blocks.vision_grid import VisionLayout

TINY = Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml"


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if dataclasses.is_dataclass(value):
        return [t for field in dataclasses.fields(value) for t in _tensors(getattr(value, field.name))]
    return []


def test_to_device_moves_every_tensor_of_the_row_nested_ones_included():
    row, _ = synthetic_row(load_spec(TINY).model, 256, images=ImageSpec(count=2, height=64, width=96))
    assert isinstance(row["image_layout"], VisionLayout) and isinstance(row["packing"], PackingContext)
    moved = to_device(row, torch.device("meta"))
    assert set(moved) == {key for key in row if key in MODEL_INPUTS}
    tensors = [t for value in moved.values() for t in _tensors(value)]
    assert len(tensors) >= 12 and all(t.device.type == "meta" for t in tensors)


def test_the_collators_vision_layout_is_the_towers_own_and_gives_the_same_features():
    spec = load_spec(TINY, ["ops.backend=hf"])
    row, _ = synthetic_row(spec.model, 256, images=ImageSpec(count=2, height=64, width=96))
    visual = build_model(spec, seed=0).model.visual
    own = visual.layout_of(row["image_grid_thw"])
    given = row["image_layout"]
    for field in ("taps", "tap_weights", "position_ids"):
        assert torch.equal(getattr(given, field), getattr(own, field)), field
    assert torch.equal(given.packing.cu_seqlens, own.packing.cu_seqlens) and given.packing.max_seqlen == own.packing.max_seqlen
    with torch.no_grad():
        assert torch.equal(visual(row["pixel_values"], row["image_grid_thw"], given), visual(row["pixel_values"], row["image_grid_thw"]))
