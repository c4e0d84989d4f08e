"""The host queues a step's start and the vision tower without waiting for the GPU (issue 22's host
gaps).

A host read of a GPU tensor (`.tolist()`, `int(...)`, a blocking copy to or from the GPU) waits
until the GPU has run everything queued before it, and the GPU then idles while the host queues
the next kernels one by one. On the 4B spec's image rows that idle time was ~180 ms of a 0.70 s
step on an H200 (BENCHMARKS.md, 2026-12-03), the vision tower's tiny kernels being queued behind
such reads. `torch.cuda.set_sync_debug_mode("error")` turns every such wait into an error, so
these tests fail on the line that waits.
"""

from pathlib import Path

import pytest
import torch

from assembler import build_model, load_spec
from assembler.bench.workload import ImageSpec, synthetic_row
from assembler.model.build import decide_auto_ops
from assembler.train.step import _step_totals, to_device

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
TINY = Path(__file__).resolve().parents[2] / "specs" / "qwen3_5_tiny.yaml"


def _row():
    spec, _ = decide_auto_ops(load_spec(TINY), "cuda", sharded=True)  # the ops `assemble train` picks here
    row, patches = synthetic_row(spec.model, 256, layout="packed", images=ImageSpec(count=2, height=64, width=96))
    assert patches > 0 and row["image_grid_thw"].device.type == "cpu"
    return spec, row


class _NoWaitingForTheGpu:
    """Inside: any host read that waits for the GPU raises. The GPU is kept busy first (a sleep
    kernel), so a wait would be a real one."""

    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time queued ahead of what the test does
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


@pytest.mark.parametrize("pinned", [False, True], ids=["pageable", "pinned"])
def test_a_step_moves_its_row_and_counts_its_targets_without_waiting_for_the_gpu(pinned):
    _, row = _row()
    if pinned:  # as the loader's workers hand rows over (DataLoader pin_memory=True)
        from torch.utils.data._utils.pin_memory import pin_memory

        row = pin_memory(row)
        assert row["input_ids"].is_pinned() and row["packing"].cu_seqlens.is_pinned()
    with _NoWaitingForTheGpu():
        batch = to_device(row, CUDA)
        num_items, _, calls = _step_totals([row], CUDA, count_mtp_targets=False, world_size=1)
    assert batch["input_ids"].device.type == "cuda" and batch["packing"].cu_seqlens.device.type == "cuda"
    # Nothing left on the host for FSDP2's root pre-forward to copy (with a copy that waits).
    assert batch["image_grid_thw"].device.type == "cuda" and batch["image_layout"].taps.device.type == "cuda"
    assert int(num_items) == int((row["shift_labels"] != -100).sum()) and calls == [1]


def test_the_vision_tower_queues_its_forward_without_waiting_for_the_gpu():
    spec, row = _row()
    visual = build_model(spec, device=CUDA, dtype=torch.bfloat16, seed=0).model.visual
    pixels, grid = row["pixel_values"].to(CUDA, torch.bfloat16), row["image_grid_thw"].to(CUDA)
    expected = visual(pixels, grid)  # as transformers calls it: the tower lays out a host copy of the grid
    with _NoWaitingForTheGpu():
        features = visual(pixels, grid, row["image_layout"])  # the collator's layout
    assert torch.equal(features, expected)
