"""Where a training step leaves the GPU idle, and what the host was doing meanwhile.

A step's wall time is its kernels' time plus the moments the GPU waits for the host: Python and
launch overhead the host could not hide, usually right after a device synchronisation (`.item()`,
`.tolist()` of a GPU tensor, a host copy), which drains the queue the host had built ahead. The
kernel breakdown (breakdown.py) cannot see these; on the H200 of 2026-12-03 they were 45 ms of a
552 ms synthetic step and 180 ms of a 701 ms step of real rows with images (BENCHMARKS.md).

From one step profiled with CPU and CUDA activity: the GPU's busy time (the union of its kernels,
copies and fills), the idle gaps between them, and for the largest gaps the host ops active at the
gap's middle (outermost first: a compiled region, an FSDP hook, an autograd node, the aten op) and
the last synchronisation before it, with the op that asked for it. The profiler's own overhead
widens the gaps a little; read them as where, not exactly how much.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Iterable

from blocks.vision_tower import PROFILER_RANGE as VISION_TOWER_RANGE

# Host calls that wait for the GPU: after one returns, the GPU has nothing queued.
# (`.item()` is aten::_local_scalar_dense; `.tolist()` and `.cpu()` end in cudaStreamSynchronize.)
SYNC_CALLS = frozenset({"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
                        "aten::_local_scalar_dense"})
MIN_GAP_MS = 0.05  # shorter idle spans are the launch latency between back-to-back kernels
NAME_CHARS = 70
SYNC_SLACK_US = 5.0
# The phase a gap falls in, read from the host ops active during it (outermost first): the
# optimizer's step, an autograd node (backward), any other op (forward, the loss and the step's
# host code), or none at all (between profiled ops).
PHASES = ("forward", "backward", "optimizer", "unattributed")
# A gap inside the vision tower: its forward is a profiler range, and FSDP2 names its hooks after
# the unit (`FSDP::pre_backward (model.visual.blocks.3)`).
VISION = "vision"


def phase_of(host_ops: list[str]) -> str:
    """The step phase of a gap whose active host ops are `host_ops`."""
    if any(op.startswith("Optimizer.") for op in host_ops):
        return "optimizer"
    if any(op.startswith("autograd::engine::evaluate_function") or "backward" in op.lower() for op in host_ops):
        return "backward"
    return "forward" if host_ops else "unattributed"


@dataclass(frozen=True)
class Span:
    """One profiled event: `name`, `start`/`end` in µs on the profiler's clock, `on_gpu` for kernels,
    copies and fills (False for host ops and runtime calls)."""

    name: str
    start: float
    end: float
    on_gpu: bool


@dataclass
class Gap:
    """One idle stretch of the GPU: `at_ms` after the step began, `ms` long; `host`: the host ops
    active at its middle, outermost first; `after_sync`: the synchronising call before it, with
    the ops that made it (outermost first), or "" when none came since the previous kernel."""

    at_ms: float
    ms: float
    host: list[str] = field(default_factory=list)
    after_sync: list[str] = field(default_factory=list)


@dataclass
class HostGaps:
    """The step's `wall_ms` (first host event to last GPU activity), `busy_ms` of GPU activity,
    `idle_ms` = wall − busy, of it `idle_after_sync_ms` in gaps that follow a synchronisation,
    `gaps` the number of idle stretches longer than MIN_GAP_MS, `largest` the longest of them,
    `idle_by_phase` their time by the step's phase (`phase_of`) and, apart, in the vision tower."""

    wall_ms: float
    busy_ms: float
    idle_ms: float
    idle_after_sync_ms: float
    gaps: int
    largest: list[Gap]
    idle_by_phase: dict[str, float] = field(default_factory=dict)  # PHASES -> ms, plus VISION (a part of them)


def host_gaps(spans: Iterable[Span], *, top: int = 15) -> HostGaps:
    """The GPU's idle gaps within one profiled step, and the host's activity during the largest."""
    spans = list(spans)
    gpu = sorted((s for s in spans if s.on_gpu), key=lambda s: s.start)
    host = sorted((s for s in spans if not s.on_gpu), key=lambda s: s.start)
    if not gpu or not host:
        return HostGaps(0.0, 0.0, 0.0, 0.0, 0, [])
    begin = min(host[0].start, gpu[0].start)
    end = max(s.end for s in gpu)
    busy, idle = 0.0, []
    cursor = begin
    for span in gpu:  # the union of GPU activity, and the holes in it
        if span.start > cursor:
            idle.append((cursor, span.start))
        if span.end > cursor:
            busy += span.end - max(span.start, cursor)
            cursor = span.end
    idle = [(a, b) for a, b in idle if (b - a) / 1000.0 >= MIN_GAP_MS]

    syncs = [s for s in host if s.name in SYNC_CALLS]
    gaps = []
    for a, b in idle:
        gap = Gap(at_ms=(a - begin) / 1000.0, ms=(b - a) / 1000.0)
        # A sync returns as the queue runs dry: its end falls at the gap's start (the clocks agree to a few µs).
        previous = [s for s in syncs if a - SYNC_SLACK_US <= s.end <= b]
        if previous:
            gap.after_sync = _chain(host, previous[0])
        gaps.append(gap)
    _fill_active_host_ops(host, gaps, begin)
    after_sync = sum(g.ms for g in gaps if g.after_sync)
    largest = sorted(gaps, key=lambda g: -g.ms)[:top]
    by_phase = dict.fromkeys((*PHASES, VISION), 0.0)
    for gap in gaps:
        by_phase[phase_of(gap.host)] += gap.ms
        if any(op == VISION_TOWER_RANGE or ".visual." in op for op in gap.host):
            by_phase[VISION] += gap.ms
    return HostGaps(wall_ms=(end - begin) / 1000.0, busy_ms=busy / 1000.0, idle_ms=(end - begin - busy) / 1000.0,
                    idle_after_sync_ms=after_sync, gaps=len(gaps), largest=largest, idle_by_phase=by_phase)


def _chain(host: list[Span], inner: Span) -> list[str]:
    """The host ops enclosing `inner` (outermost first), `inner` last."""
    enclosing = [s for s in host if s.start <= inner.start and s.end >= inner.end and s is not inner]
    return [_short(s.name) for s in enclosing] + [_short(inner.name)]


def _fill_active_host_ops(host: list[Span], gaps: list[Gap], begin: float) -> None:
    """Set each gap's `host` to the host ops active at its middle: one sweep over the host events in
    start order, keeping those not yet ended in a heap by end time."""
    order = sorted(range(len(gaps)), key=lambda i: gaps[i].at_ms + gaps[i].ms / 2)
    active: list[tuple[float, int]] = []  # (end, index into host)
    next_event = 0
    for i in order:
        middle = begin + (gaps[i].at_ms + gaps[i].ms / 2) * 1000.0
        while next_event < len(host) and host[next_event].start <= middle:
            heapq.heappush(active, (host[next_event].end, next_event))
            next_event += 1
        while active and active[0][0] < middle:
            heapq.heappop(active)
        gaps[i].host = [_short(host[index].name) for _, index in sorted(active, key=lambda item: item[1])]


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def spans_of_profile(prof) -> list[Span]:  # noqa: ANN001 (torch.profiler.profile)
    """The profiler's events as Spans (kernels, copies and fills on the GPU; everything else on the host)."""
    import torch

    spans = []
    for event in prof.events():
        on_gpu = getattr(event, "device_type", None) == torch.autograd.DeviceType.CUDA
        spans.append(Span(event.name, float(event.time_range.start), float(event.time_range.end), on_gpu))
    return spans


def format_host_gaps(gaps: HostGaps, label: str) -> str:
    if not gaps.wall_ms:
        return ""
    lines = [f"host gaps, {label}: GPU busy {gaps.busy_ms:.1f} of {gaps.wall_ms:.1f} ms of the profiled step; "
             f"idle {gaps.idle_ms:.1f} ms in {gaps.gaps} gaps over {MIN_GAP_MS} ms, "
             f"{gaps.idle_after_sync_ms:.1f} ms of it right after a synchronisation"]
    if gaps.idle_by_phase:
        phases = ", ".join(f"{phase} {gaps.idle_by_phase.get(phase, 0.0):.1f}" for phase in PHASES)
        lines.append(f"  idle by phase (ms): {phases}; in the vision tower {gaps.idle_by_phase.get(VISION, 0.0):.1f}")
    for gap in gaps.largest:
        lines.append(f"  {gap.ms:7.2f} ms at {gap.at_ms:7.1f} ms; host: {' > '.join(gap.host[-5:]) or '(nothing profiled)'}")
        if gap.after_sync:
            lines.append(f"             after sync: {' > '.join(gap.after_sync[-5:])}")
    return "\n".join(lines)
