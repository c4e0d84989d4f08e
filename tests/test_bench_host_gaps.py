"""The host-gap report of `assemble bench` (assembler/bench/host_gaps.py) on hand-made timelines,
whose busy and idle times are known by construction."""

import torch
from torch.profiler import ProfilerActivity, profile

from assembler.bench.host_gaps import MIN_GAP_MS, Span, host_gaps, spans_of_profile
from assembler.bench.measure import Measurement
from assembler.bench.report import format_breakdown, load, save


def _timeline() -> list[Span]:
    """µs: kernels 0–100 and 50–150 (overlapping: busy 150), a gap 150–400 after a `.item()` made
    by the loss, kernels 400–500, a 10 µs gap (below the threshold), a kernel 510–600."""
    return [
        Span("forward", 0, 600, on_gpu=False),
        Span("loss", 120, 160, on_gpu=False),
        Span("aten::item", 125, 152, on_gpu=False),
        Span("aten::_local_scalar_dense", 126, 151, on_gpu=False),
        Span("vision tower", 200, 390, on_gpu=False),
        Span("aten::mm", 250, 260, on_gpu=False),
        Span("cudaLaunchKernel", 380, 385, on_gpu=False),
        Span("gemm_a", 0, 100, on_gpu=True),
        Span("gemm_b", 50, 150, on_gpu=True),
        Span("gemm_c", 400, 500, on_gpu=True),
        Span("gemm_d", 510, 600, on_gpu=True),
    ]


def test_busy_and_idle_time_of_overlapping_kernels_and_holes():
    gaps = host_gaps(_timeline())
    assert gaps.wall_ms == 0.6
    assert abs(gaps.busy_ms - 0.34) < 1e-9  # 150 + 100 + 90 µs: the overlap counted once
    assert abs(gaps.idle_ms - 0.26) < 1e-9  # 250 + 10 µs
    assert 0.010 < MIN_GAP_MS < 0.25
    assert gaps.gaps == 1  # the 10 µs hole is launch latency, not a gap


def test_a_gap_names_the_sync_before_it_and_the_host_ops_during_it():
    [gap] = host_gaps(_timeline()).largest
    assert gap.at_ms == 0.15 and gap.ms == 0.25
    assert gap.after_sync == ["forward", "loss", "aten::item", "aten::_local_scalar_dense"]
    assert gap.host == ["forward", "vision tower"]  # at the middle (275 µs): aten::mm had ended
    assert abs(host_gaps(_timeline()).idle_after_sync_ms - 0.25) < 1e-9


def test_a_gap_without_a_sync_before_it_says_none():
    spans = [s for s in _timeline() if s.name not in ("aten::item", "aten::_local_scalar_dense")]
    [gap] = host_gaps(spans).largest
    assert gap.after_sync == [] and host_gaps(spans).idle_after_sync_ms == 0.0


def test_the_report_prints_and_the_json_keeps_the_gaps(tmp_path):
    row = Measurement(label="ours", tokens_per_step=8192, tokens_per_s=1.0, mfu=0.1, step_s=1.0, peak_gib=1.0,
                      breakdown=[("matmul", 0.34)], top_kernels=[("gemm_a", 0.1)], host_gaps=host_gaps(_timeline()))
    text = format_breakdown(row)
    assert "GPU busy 0.3 of 0.6 ms" in text and "after sync: forward > loss > aten::item > aten::_local_scalar_dense" in text
    save([row], tmp_path / "rows.json")
    assert load(tmp_path / "rows.json")[0].host_gaps == row.host_gaps


def test_a_profile_becomes_host_spans_on_the_cpu():
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(4, 4) @ torch.ones(4, 4)
    spans = spans_of_profile(prof)
    assert any(s.name == "aten::mm" and not s.on_gpu and s.end >= s.start for s in spans)
    assert host_gaps(spans).wall_ms == 0.0  # no GPU activity: nothing to say


def test_idle_time_is_split_by_the_phase_the_host_was_in():
    """Gaps (µs) during a vision FSDP hook in forward (200), during an autograd node (100), during
    the optimizer's step (60), with no host op active (80), and in the vision tower's range (190)."""
    spans = [
        Span("gemm", 0, 100, on_gpu=True),
        Span("FSDP::pre_forward (model.visual.blocks.3)", 90, 310, on_gpu=False),
        Span("gemm", 300, 400, on_gpu=True),
        Span("autograd::engine::evaluate_function: MmBackward0", 390, 510, on_gpu=False),
        Span("gemm", 500, 600, on_gpu=True),
        Span("Optimizer.step#AdamW.step", 595, 670, on_gpu=False),
        Span("gemm", 660, 700, on_gpu=True),
        Span("gemm", 780, 800, on_gpu=True),
        Span("vision tower", 800, 1000, on_gpu=False),  # the tower's own range (blocks/vision_tower.py)
        Span("gemm", 990, 1000, on_gpu=True),
    ]
    phases = host_gaps(spans).idle_by_phase
    assert {phase: round(ms * 1000) for phase, ms in phases.items()} == {
        "forward": 390, "backward": 100, "optimizer": 60, "unattributed": 80, "vision": 390}
    text = format_breakdown(Measurement(label="ours", tokens_per_step=1, tokens_per_s=1.0, mfu=0.1, step_s=1.0, peak_gib=1.0,
                                        breakdown=[("matmul", 0.4)], top_kernels=[("gemm", 0.4)], host_gaps=host_gaps(spans)))
    assert "idle by phase (ms): forward 0.4, backward 0.1, optimizer 0.1, unattributed 0.1; in the vision tower 0.4" in text
