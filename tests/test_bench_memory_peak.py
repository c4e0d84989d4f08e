"""The memory-peak report of `assemble bench --memory-peak`, on hand-written allocator traces (the
format `torch.cuda.memory._snapshot()` returns; a real trace needs a GPU: tests/gpu)."""

from __future__ import annotations

import json

import pytest

from assembler.bench import memory_peak
from assembler.bench.measure import Measurement
from assembler.bench.memory_peak import BEFORE_STEP, MemoryPeak, allocation_site, peak_of_trace
from assembler.bench.report import format_memory_peak, load, save

GIB = 2**30
REPO = "/work/repo"
INDUCTOR = "/tmp/inductor-cache-for-tests"


@pytest.fixture(autouse=True)
def _inductor_cache(monkeypatch):
    monkeypatch.setattr(memory_peak, "_inductor_cache_dir", lambda: INDUCTOR)


def frame(filename: str, line: int, name: str) -> dict:
    return {"filename": filename, "line": line, "name": name}


def alloc(addr: int, size: int, *frames: dict) -> dict:
    return {"action": "alloc", "addr": addr, "size": size, "frames": list(frames)}


def free(addr: int, size: int) -> list[dict]:
    return [{"action": "free_requested", "addr": addr, "size": size}, {"action": "free_completed", "addr": addr, "size": size}]


def marker(phase: str) -> dict:
    size = memory_peak._MARKER_ELEMENTS[phase] * 4
    return alloc(10**9 + size, size, frame(f"{REPO}/assembler/bench/memory_peak.py", 1, "_phase_marker"))


LAYER = frame(f"{REPO}/blocks/text_layer.py", 40, "forward")
FLA = frame("/usr/lib/python3/site-packages/fla/ops/chunk.py", 7, "chunk_fwd")
TORCH = frame("/usr/lib/python3/site-packages/torch/nn/functional.py", 3, "linear")


def test_the_peak_is_the_largest_running_total_and_lists_what_is_alive_then():
    trace = [
        alloc(1, 3 * GIB, TORCH, LAYER),  # activations kept for backward
        alloc(2, 2 * GIB, FLA, LAYER),  # a transient freed before the peak
        *free(2, 2 * GIB),
        alloc(3, 1 * GIB, FLA, LAYER),  # alive at the peak
        marker("backward"),
        alloc(4, 4 * GIB, frame(f"{INDUCTOR}/ab/cab.py", 9, "call")),  # compiled backward on the engine's thread
        *free(4, 4 * GIB),  # the peak was just before this
        *free(1, 3 * GIB),
        marker("optimizer"),
        alloc(5, 1 * GIB, TORCH),
    ]
    peak = peak_of_trace(trace, resident_bytes=10 * GIB)
    marker_bytes = memory_peak._MARKER_ELEMENTS["backward"] * 4
    assert peak.peak_gib == pytest.approx((10 + 3 + 1 + 4) + marker_bytes / GIB)
    assert peak.phase == "backward"
    sites = dict(peak.sites)
    assert sites[BEFORE_STEP] == 10
    assert sites["blocks/text_layer.py:40 forward"] == 3  # the innermost frame outside torch
    assert sites["fla/ops/chunk.py:7 chunk_fwd"] == 1  # fla's own line, not the layer that called it
    assert sites["compiled graph (backward)"] == 4
    assert [gib for _, gib in peak.sites] == sorted((gib for _, gib in peak.sites), reverse=True)


def test_frees_of_resident_blocks_are_taken_from_the_resident_bytes():
    trace = [*free(77, 2 * GIB), alloc(1, 1 * GIB, LAYER)]  # e.g. last step's gradients, freed by zero_grad
    peak = peak_of_trace(trace, resident_bytes=5 * GIB)
    assert peak.peak_gib == 5  # at the start: 5, then 3, then 4
    assert peak.sites == [(BEFORE_STEP, 5)]

    later = peak_of_trace([*free(77, 2 * GIB), alloc(1, 3 * GIB, LAYER)], resident_bytes=5 * GIB)
    assert later.peak_gib == 6 and dict(later.sites) == {BEFORE_STEP: 3, "blocks/text_layer.py:40 forward": 3}


def test_a_trace_that_never_rises_above_the_resident_bytes_peaks_before_it():
    peak = peak_of_trace([alloc(1, GIB, LAYER), *free(1, GIB), *free(9, GIB)], resident_bytes=4 * GIB)
    assert peak.peak_gib == 5 and peak.phase == "forward"


def test_allocation_sites_skip_torch_and_name_compiled_code_by_its_caller():
    assert allocation_site([TORCH, LAYER]) == "blocks/text_layer.py:40 forward"
    compiled = frame(f"{INDUCTOR}/x7/cx7.py", 120, "call")
    assert allocation_site([compiled, TORCH, LAYER]) == "compiled, in blocks/text_layer.py:40 forward"
    assert allocation_site([compiled, TORCH]) == "compiled graph (backward)"
    assert allocation_site([]) == "no Python frame (autograd engine, allocator)"
    baseline = frame("/opt/venv/lib/python3.12/site-packages/transformers/models/qwen3_5/modeling_qwen3_5.py", 88, "forward")
    assert allocation_site([TORCH, baseline]) == "transformers/models/qwen3_5/modeling_qwen3_5.py:88 forward"


def test_the_report_prints_and_survives_the_json_round_trip(tmp_path):
    peak = MemoryPeak(peak_gib=46.25, phase="backward", sites=[(BEFORE_STEP, 23.5), ("fla/ops/chunk.py:7 chunk_fwd", 4.0)])
    row = Measurement(label="ours", tokens_per_step=16384, device="H200", tokens_per_s=1.0, mfu=0.5, step_s=1.0,
                      peak_gib=46.3, memory_peak=peak)
    text = format_memory_peak(row)
    assert "46.2 GiB, during the backward" in text and "fla/ops/chunk.py:7 chunk_fwd" in text
    save([row], tmp_path / "rows.json")
    assert load(tmp_path / "rows.json") == [row]


def test_rows_saved_before_the_report_existed_still_load(tmp_path):
    row = Measurement(label="ours", tokens_per_step=16384, device="H200", tokens_per_s=1.0, mfu=0.5, step_s=1.0, peak_gib=46.3)
    data = row.to_dict()
    del data["memory_peak"]
    (tmp_path / "old.json").write_text(json.dumps([data]))
    assert load(tmp_path / "old.json") == [row]
