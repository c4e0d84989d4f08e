"""The benchmark table compares ours with the best anchor at each size: speed with the fastest
anchor row, memory with the leanest (the H200 numbers of 2026-12-01, ratios computed by hand)."""

from assembler.bench.measure import Measurement
from assembler.bench.report import comparison_table


def _row(label, tokens_per_s, peak_gib, tokens=8192, error=None):
    return Measurement(label=label, tokens_per_step=tokens, tokens_per_s=tokens_per_s, mfu=0.3, peak_gib=peak_gib, error=error)


def test_ours_against_the_fastest_and_the_leanest_anchor():
    anchors = [
        _row("transformers, checkpointing", 9281, 47.7),
        _row("transformers + Liger, checkpointing", 9804, 33.0),
        _row("transformers, no checkpointing", None, None, error="OOM"),
    ]
    ours = [_row("ours, one document", 10794, 68.7), _row("ours, 16k", 9000, 40.0, tokens=16384)]
    lines = comparison_table(anchors, ours).splitlines()
    ours_line = next(line for line in lines if "ours, one document" in line)
    assert ours_line.split()[-2:] == ["1.10x", "2.08x"]  # 10794 / 9804, 68.7 / 33.0
    lone = next(line for line in lines if "ours, 16k" in line)
    assert "(no anchor)" in lone
    assert sum("transformers" in line for line in lines) == 3  # every anchor row is shown, the failed one too
