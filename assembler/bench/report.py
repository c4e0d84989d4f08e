"""Benchmark tables: one row per measurement, a baseline comparison, and per-op breakdowns.

`python -m assembler.bench.report OURS.json ... --anchors ANCHOR.json ... [--memory-at 16384]`
prints the comparison of JSON files written by `assemble bench --json` (ours) and
benchmarks/hf_baseline.py --json (the anchors).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from assembler.bench.measure import Measurement
from assembler.bench.host_gaps import Gap, HostGaps, format_host_gaps
from assembler.bench.memory_peak import MemoryPeak


def format_rows(results: list[Measurement]) -> str:
    lines = [f"{'run':<40} {'tokens/step':>11} {'tokens/s':>10} {'MFU':>6} {'step s':>7} {'peak GiB':>9}"]
    for r in results:
        if r.error:
            lines.append(f"{r.label:<40} {r.tokens_per_step:>11,} {r.error:>10}")
            continue
        lines.append(
            f"{r.label:<40} {r.tokens_per_step:>11,} {r.tokens_per_s:>10,.0f} {r.mfu:>6.1%} {r.step_s:>7.3f} {r.peak_gib:>9.1f}"
        )
    return "\n".join(lines)


def format_breakdown(result: Measurement) -> str:
    if not result.breakdown:
        return ""
    total = sum(ms for _, ms in result.breakdown)
    lines = [f"per-op GPU time, {result.label} @ {result.tokens_per_step:,} tokens ({total:.1f} ms of kernels per step):"]
    lines += [f"  {category:<40} {ms:>9.1f} ms {ms / total:>6.1%}" for category, ms in result.breakdown]
    lines.append("  top kernels:")
    lines += [f"    {ms:>8.1f} ms  {name}" for name, ms in result.top_kernels]
    if result.host_gaps is not None:
        lines.append(format_host_gaps(result.host_gaps, f"{result.label} @ {result.tokens_per_step:,} tokens"))
    return "\n".join(lines)


def format_memory_peak(result: Measurement) -> str:
    peak = result.memory_peak
    if peak is None:
        return ""
    lines = [f"alive at the memory peak, {result.label} @ {result.tokens_per_step:,} tokens "
             f"({peak.peak_gib:.1f} GiB, during the {peak.phase}):"]
    lines += [f"  {gib:>7.2f} GiB  {site}" for site, gib in peak.sites]
    return "\n".join(lines)


def comparison_table(anchors: list[Measurement], ours: list[Measurement]) -> str:
    """Rows by tokens/step: every anchor row (the runs a user would otherwise pick: transformers,
    with Liger-Kernel, with and without checkpointing), then every run of ours with its speed-up
    over the *fastest* anchor at that size and its memory against the *leanest* one, so a row is
    compared with the best of the field, not with its weakest."""
    lines = [
        f"{'tokens/step':>11} {'run':<40} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9} {'vs fastest':>10} {'vs leanest':>10}"
    ]
    for tokens in sorted({r.tokens_per_step for r in anchors + ours}):
        here = [r for r in anchors if r.tokens_per_step == tokens]
        measured = [r for r in here if not r.error]
        fastest = max(measured, key=lambda r: r.tokens_per_s, default=None)
        leanest = min(measured, key=lambda r: r.peak_gib, default=None)
        for r in here + [r for r in ours if r.tokens_per_step == tokens]:
            if r.error:
                lines.append(f"{tokens:>11,} {r.label:<40} {r.error:>10}")
                continue
            speedup = memory = ""
            if r not in here:
                speedup = f"{r.tokens_per_s / fastest.tokens_per_s:.2f}x" if fastest else "(no anchor)"
                memory = f"{r.peak_gib / leanest.peak_gib:.2f}x" if leanest else ""
            lines.append(
                f"{tokens:>11,} {r.label:<40} {r.tokens_per_s:>10,.0f} {r.mfu:>6.1%} {r.peak_gib:>9.1f} {speedup:>10} {memory:>10}"
            )
    return "\n".join(lines)


def load(path: str | Path) -> list[Measurement]:
    rows = json.loads(Path(path).read_text())
    return [Measurement(**{**row, "breakdown": [tuple(x) for x in row["breakdown"]],
                           "top_kernels": [tuple(x) for x in row["top_kernels"]],
                           "memory_peak": _memory_peak(row.get("memory_peak")),
                           "host_gaps": _host_gaps(row.get("host_gaps"))}) for row in rows]


def _memory_peak(saved: dict | None) -> MemoryPeak | None:
    if saved is None:
        return None
    return MemoryPeak(**{**saved, "sites": [tuple(site) for site in saved["sites"]]})


def _host_gaps(saved: dict | None) -> HostGaps | None:
    if saved is None:
        return None
    return HostGaps(**{**saved, "largest": [Gap(**gap) for gap in saved["largest"]]})


def save(results: list[Measurement], path: str | Path) -> None:
    Path(path).write_text(json.dumps([r.to_dict() for r in results], indent=1))


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m assembler.bench.report", description="Compare benchmark JSON files.")
    parser.add_argument("ours", nargs="*", help="rows of assemble bench --json")
    parser.add_argument("--anchors", nargs="*", default=[], metavar="JSON",
                        help="rows of benchmarks/hf_baseline.py --json (each anchor: plain, --liger, --no-checkpointing)")
    parser.add_argument("--memory-at", type=int, default=None, metavar="TOKENS",
                        help="also print what is alive at the memory peak of every row of this size (--memory-peak runs)")
    args = parser.parse_args(argv)
    anchors = [r for path in args.anchors for r in load(path)]
    ours = [r for path in args.ours for r in load(path)]
    devices = sorted({r.device for r in anchors + ours if r.device})
    print(f"device: {', '.join(devices)}")
    print(comparison_table(anchors, ours))
    for row in anchors + ours:
        if row.tokens_per_step == args.memory_at and row.memory_peak is not None:
            print(format_memory_peak(row))


if __name__ == "__main__":
    main(sys.argv[1:])
