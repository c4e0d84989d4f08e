"""Time to the first optimizer step and peak memory of `assemble train` on a large JSONL set (issue 16).

    python benchmarks/make_large_dataset.py DIR --records 200000
    python benchmarks/data_first_step.py DIR/records.jsonl [more sets ...] [--spec specs/qwen3_5_tiny.yaml] [--loader-only]

Each set runs the real CLI in a process of its own: the spec with that one source, 2,048 tokens
a step, one step, no checkpoint or export. Printed per set: the seconds from starting the process
to the first "step 1/" line of its log (what a user waits for), the wall time of the whole
process, and its peak resident memory (ru_maxrss of that process, from wait4). The tiny spec keeps the model's
share small, so the data's share shows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["train.tokens_per_step=2048", "data.packing.length=2048", "train.steps=1", "train.export_hf=false",
             "train.checkpoint.every=0", "train.log_every=1"]


# --loader-only: the same spec's loader and its first batch, no model: the data's own time and memory.
LOADER_ONLY = """
import sys
from assembler import load_spec
from assembler.data import build_loader
spec = load_spec(sys.argv[1], overrides=sys.argv[3:])
next(iter(build_loader(spec)))
print("step 1/ (the loader's first batch)", flush=True)
"""


def measure(spec: Path, source: Path, out: Path, loader_only: bool = False) -> tuple[float, float, float]:
    """(seconds to the first step's log line, seconds in all, peak RSS GiB) of one run."""
    overrides = [f"data.sources=[{{path: {source}}}]", *OVERRIDES]
    if loader_only:
        args = [sys.executable, "-c", LOADER_ONLY, str(spec), "--", *overrides]
    else:
        args = [sys.executable, str(ROOT / "cli.py"), "train", str(spec), "--output-dir", str(out),
                *[a for o in overrides for a in ("-o", o)]]
    start = time.monotonic()
    first_step = float("nan")
    run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in run.stdout:
        if line.startswith("step 1/") and first_step != first_step:
            first_step = time.monotonic() - start
        print("   ", line.rstrip(), file=sys.stderr)
    _, status, usage = os.wait4(run.pid, 0)  # this child's own peak, not the largest of all children
    run.returncode = os.waitstatus_to_exitcode(status)
    if run.returncode:
        raise SystemExit(f"{source}: assemble train exited with {run.returncode}")
    return first_step, time.monotonic() - start, usage.ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--spec", type=Path, default=ROOT / "specs" / "qwen3_5_tiny.yaml")
    parser.add_argument("--out", type=Path, default=Path("/tmp/data_first_step"))
    parser.add_argument("--loader-only", action="store_true", help="time and memory of the loader's first batch alone")
    args = parser.parse_args()
    rows = []
    for index, source in enumerate(args.sources):
        lines = sum(1 for _ in source.open("rb"))
        first, total, peak = measure(args.spec, source, args.out / f"run{index}", args.loader_only)
        rows.append((source, lines, first, total, peak))
    print(f"{'source':<40} {'records':>10} {'first step s':>13} {'wall s':>8} {'peak RSS GiB':>13}")
    for source, lines, first, total, peak in rows:
        print(f"{str(source):<40} {lines:>10,} {first:>13.1f} {total:>8.1f} {peak:>13.2f}")


if __name__ == "__main__":
    main()
