"""Time a training step (forward + backward + optimizer step) the same way for every model.

Warm-up steps first (compile, autotuning, optimizer state), then `steps` timed steps between two
device synchronisations; the peak is the allocator's peak over the timed steps; one more step
runs under the profiler for the per-op breakdown and the host gaps (host_gaps.py), and, when asked, one more with the allocator's
history on, for what is alive at the memory peak (`memory_peak.py`). Benchmarks print numbers,
tests never assert on them.

A step calls `memory_peak.mark("backward")` before its backward and `mark("optimizer")` before its
optimizer step, so the memory report can say in which phase the peak falls (a no-op otherwise).
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from assembler.bench.breakdown import kernel_breakdown, profiled_spans
from assembler.bench.host_gaps import HostGaps, host_gaps
from assembler.bench.memory_peak import MemoryPeak, record_memory_peak
from assembler.train.metrics import peak_flops



@dataclass
class Measurement:
    """One row of a benchmark table. `error` is set (e.g. "OOM") when the step could not run."""

    label: str
    tokens_per_step: int
    device: str = ""
    tokens_per_s: float | None = None
    mfu: float | None = None
    step_s: float | None = None
    peak_gib: float | None = None
    breakdown: list[tuple[str, float]] = field(default_factory=list)  # (op category, ms per step)
    top_kernels: list[tuple[str, float]] = field(default_factory=list)  # (kernel name, ms per step)
    memory_peak: MemoryPeak | None = None  # what is alive at the peak, by allocation site
    host_gaps: HostGaps | None = None  # where the profiled step left the GPU idle, and what the host did
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def measure_training_step(
    step: Callable[[], None],
    *,
    label: str,
    tokens_per_step: int,
    flops_per_step: float,
    steps: int = 5,
    warmup: int = 2,
    profile: bool = True,
    memory_peak: bool = False,
    cleanup: Callable[[], None] | None = None,
) -> Measurement:
    """Run `step` warmup + steps (+1 profiled, +1 memory-recorded) times on the current CUDA device and measure it.

    An out-of-memory step gives a Measurement with error="OOM" (after `cleanup`, which should drop
    gradients) instead of raising, so one size too big does not end a benchmark table.
    """
    device = torch.cuda.get_device_name()
    result = Measurement(label=label, tokens_per_step=tokens_per_step, device=device)
    try:
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        elapsed = (time.perf_counter() - start) / steps
        result.step_s = elapsed
        result.tokens_per_s = tokens_per_step / elapsed
        peak = peak_flops(torch.device("cuda"))  # the one table of peaks `assemble train` uses too
        result.mfu = flops_per_step / elapsed / peak if peak else None
        result.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        if profile:
            spans = profiled_spans(step)
            result.breakdown, result.top_kernels = kernel_breakdown(spans)
            result.host_gaps = host_gaps(spans)
        if memory_peak:
            result.memory_peak = record_memory_peak(step)
    except torch.OutOfMemoryError:
        result.error = "OOM"
    finally:
        if cleanup is not None:
            cleanup()
        gc.collect()
        torch.cuda.empty_cache()
    return result
