"""Compare the loss curves of two `assemble train` runs (their metrics.jsonl): does one lose anything?

    python benchmarks/compare_loss_curves.py A/metrics.jsonl B/metrics.jsonl --labels "fp32 masters" "bf16 masters"

Single steps are noisy (each step is other rows), so the curves are compared as moving averages
over WINDOW steps, on the steps both runs logged: the largest relative gap of B's average above
A's after warm-up, the mean of each over the last WINDOW steps, and a verdict with the tolerance
it used. Both runs must have trained on the same rows (same spec, data and seed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

WINDOW = 20
# B "loses nothing" when its final average is within this share of A's: bf16 rounding of the
# masters shows as noise of about this size on short runs; a real loss of quality is larger.
TOLERANCE = 0.01


def read_losses(path: Path) -> dict[int, float]:
    losses = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses[int(record["step"])] = float(record["loss"])
    return losses


def moving_average(values: list[float], window: int) -> list[float]:
    return [sum(values[i - window + 1:i + 1]) / window for i in range(window - 1, len(values))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--labels", nargs=2, default=["A", "B"])
    args = parser.parse_args()
    a, b = read_losses(args.a), read_losses(args.b)
    steps = sorted(set(a) & set(b))
    if len(steps) < 2 * WINDOW:
        raise SystemExit(f"only {len(steps)} steps in both runs; need at least {2 * WINDOW}")
    avg_a = moving_average([a[s] for s in steps], WINDOW)
    avg_b = moving_average([b[s] for s in steps], WINDOW)
    gaps = [(y - x) / x for x, y in zip(avg_a, avg_b)]
    worst = max(range(len(gaps)), key=lambda i: gaps[i])
    final_gap = gaps[-1]
    print(f"{len(steps)} steps in both; moving averages over {WINDOW} steps")
    print(f"{args.labels[0]}: first {avg_a[0]:.4f}, last {avg_a[-1]:.4f}")
    print(f"{args.labels[1]}: first {avg_b[0]:.4f}, last {avg_b[-1]:.4f}")
    print(f"largest gap of {args.labels[1]} above {args.labels[0]}: {gaps[worst]:+.2%} at step {steps[worst + WINDOW - 1]}")
    verdict = "loses nothing" if final_gap <= TOLERANCE else "loses"
    print(f"final gap {final_gap:+.2%}: {args.labels[1]} {verdict} (tolerance {TOLERANCE:.0%} of the final average)")


if __name__ == "__main__":
    main()
