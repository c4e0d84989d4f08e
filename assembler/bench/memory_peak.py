"""What is alive at a training step's memory peak, and who allocated it.

The CUDA caching allocator can record every allocation and free with its Python stack
(`torch.cuda.memory._record_memory_history`); `torch.cuda.memory._snapshot()` hands the trace
back. PyTorch ships viewers for that trace (`torch.cuda._memory_viz`, pytorch.org/memory_viz) but
no summary a benchmark can print, so this module replays the trace: it finds the moment the
allocated bytes peak and sums the blocks alive then by the source line that allocated them.

A step marks its phases by calling `mark("backward")` before `loss.backward()` and
`mark("optimizer")` before the optimizer step: a no-op, except while `record_memory_peak` records,
when it allocates one tiny tensor from `_phase_marker`, which the replay finds by its frame name,
so the peak is also placed in its phase.

Trace entries are dicts: action ("alloc", "free_requested", "free_completed", "segment_alloc", ...),
addr, size, frames (innermost first: {"filename", "line", "name"}). A block counts from "alloc" to
"free_completed" with the size its caller asked for, as the allocator's `requested_bytes` statistic
does; `torch.cuda.max_memory_allocated()`, the benchmark's peak column, counts blocks rounded up
to 512 bytes, so it reads slightly higher.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch

log = logging.getLogger(__name__)

PHASES = ("forward", "backward", "optimizer")
BEFORE_STEP = "allocated before the step (parameters, optimizer state)"
MAX_TRACE_ENTRIES = 2_000_000  # a 4B step at 32k tokens records ~10^5 entries; the ring buffer is bounded anyway
# Frames from these files are plumbing between the code that asked for memory and the allocator.
PLUMBING = ("/torch/", "<frozen ", "/contextlib.py", "/functools.py", "/threading.py")


@dataclass
class MemoryPeak:
    """The peak of one step: when it happened and the largest sources of the bytes alive then."""

    peak_gib: float
    phase: str  # forward | backward | optimizer
    sites: list[tuple[str, float]] = field(default_factory=list)  # (allocation site, GiB), largest first


def mark(phase: str) -> None:
    """Step phase boundary; does nothing unless `record_memory_peak` is recording."""
    if _recording:
        _phase_marker(phase)


def record_memory_peak(step: Callable[[], None], *, top: int = 12) -> MemoryPeak | None:
    """Run `step()` once with the allocator's history on; the peak of that step and its sites
    (None, logged, if the step outran the trace's ring buffer)."""
    torch.cuda.synchronize()
    resident = torch.cuda.memory_stats()["requested_bytes.all.current"]
    global _recording
    torch.cuda.memory._record_memory_history("all", context="alloc", stacks="python", max_entries=MAX_TRACE_ENTRIES)
    _recording = True
    try:
        step()
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
    finally:
        _recording = False
        torch.cuda.memory._record_memory_history(None)
    trace = snapshot["device_traces"][torch.cuda.current_device()]
    if len(trace) >= MAX_TRACE_ENTRIES:  # the ring buffer wrapped: a replay would start mid-step
        log.warning("memory peak: the step made more than %s allocator events, no report (raise MAX_TRACE_ENTRIES)", f"{MAX_TRACE_ENTRIES:,}")
        return None
    return peak_of_trace(trace, resident_bytes=resident, top=top)


def peak_of_trace(trace: list[dict], *, resident_bytes: int, top: int = 12) -> MemoryPeak:
    """Replay `trace` from `resident_bytes` already allocated; the peak, its phase and its `top` sites.

    Frees of blocks allocated before the trace began lower the count below `resident_bytes` (their
    allocation is not in the trace), which is right: they were part of the resident bytes.
    """
    allocated, peak, peak_index = resident_bytes, resident_bytes, -1
    for index, entry in enumerate(trace):
        allocated += _delta(entry)
        if allocated > peak:
            peak, peak_index = allocated, index

    live: dict[int, dict] = {}
    phase, freed_resident = PHASES[0], 0
    for entry in trace[: peak_index + 1]:
        action = entry["action"]
        if action == "alloc":
            if _is_phase_marker(entry):
                phase = _marker_phase(entry, phase)
            live[entry["addr"]] = entry
        elif action == "free_completed":
            if live.pop(entry["addr"], None) is None:
                freed_resident += entry["size"]
    by_site: dict[str, int] = defaultdict(int)
    by_site[BEFORE_STEP] = resident_bytes - freed_resident
    for entry in live.values():
        by_site[allocation_site(entry.get("frames", []))] += entry["size"]
    sites = sorted(((site, size / 2**30) for site, size in by_site.items() if size > 0), key=lambda item: -item[1])
    return MemoryPeak(peak_gib=peak / 2**30, phase=phase, sites=sites[:top])


def allocation_site(frames: list[dict]) -> str:
    """The innermost frame outside PyTorch (model code, fla, transformers), as `path:line function`.

    Inside a compiled graph that frame is Inductor's generated code, which says nothing to a
    reader: the site is then the next frame out that is not (the compiled module's forward), or
    "compiled graph (backward)" when there is none, as on the autograd engine's thread.
    """
    generated, generated_dir = False, _inductor_cache_dir()
    for frame in frames:
        filename = frame["filename"]
        if any(part in filename for part in PLUMBING):
            continue
        if filename.startswith(generated_dir):
            generated = True
            continue
        site = f"{_short_path(filename)}:{frame['line']} {frame['name']}"
        return f"compiled, in {site}" if generated else site
    return "compiled graph (backward)" if generated else "no Python frame (autograd engine, allocator)"


def _delta(entry: dict) -> int:
    if entry["action"] == "alloc":
        return entry["size"]
    if entry["action"] == "free_completed":
        return -entry["size"]
    return 0


def _short_path(filename: str) -> str:
    """site-packages/fla/ops/x.py -> fla/ops/x.py; /repo/blocks/x.py -> blocks/x.py."""
    for anchor in ("site-packages/", "dist-packages/"):
        if anchor in filename:
            return filename.split(anchor, 1)[1]
    parts = filename.split("/")
    for index, part in enumerate(parts):
        if part in ("blocks", "assembler", "benchmarks"):
            return "/".join(parts[index:])
    return filename


@functools.cache  # asked once per live block of a replay; the answer is fixed for the process
def _inductor_cache_dir() -> str:
    """Where Inductor writes the Python of compiled graphs (TORCHINDUCTOR_CACHE_DIR or its default)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


_recording = False
_MARKER_NAME = "_phase_marker"
# One marker size per phase, so the replay reads the phase off the trace: 512-byte allocator blocks.
_MARKER_ELEMENTS = {phase: 128 * (index + 1) for index, phase in enumerate(PHASES)}  # float32 elements


def _phase_marker(phase: str) -> None:
    torch.empty(_MARKER_ELEMENTS[phase], device="cuda")


def _is_phase_marker(entry: dict) -> bool:
    frames = entry.get("frames") or []
    return any(frame["name"] == _MARKER_NAME for frame in frames[:3])


def _marker_phase(entry: dict, current: str) -> str:
    for phase, elements in _MARKER_ELEMENTS.items():
        if entry["size"] == elements * 4:
            return phase
    return current
