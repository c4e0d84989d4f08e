"""MFU arithmetic (torchtitan's convention), the JSONL metrics file and the terminal display."""

import io
import json

import pytest
from torch import nn

from assembler.train import metrics
from assembler.train.metrics import METRICS_FILE, MetricsLogger, ThroughputMeter, flops_per_token, matmul_parameter_count


class TinyLM(nn.Module):
    def __init__(self, tie: bool):
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.proj = nn.Linear(8, 8)  # 64 + 8 bias (bias is not a matmul weight)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 100, bias=False)
        if tie:
            self.head.weight = self.embed.weight


@pytest.mark.parametrize("tie", [True, False])
def test_matmul_parameters_count_the_head_once_and_no_lookup(tie):
    # untied: the embedding table is a lookup, not a matmul; tied: the shared table counts once, as the head
    assert matmul_parameter_count(TinyLM(tie)) == 64 + 800


def test_flops_per_token_formula():
    text = {"layers": ["linear", "full", "linear", "full"], "mixers": {"full": {"num_heads": 4, "head_dim": 32}}}
    seq = 1024
    assert flops_per_token(TinyLM(True), text, seq) == 6 * 864 + 12 * 2 * 4 * 32 * seq


def test_mfu_uses_peak(monkeypatch):
    """Hand-computed: 1000 tokens in 2 s = 500 tokens/s; x 1e9 flops/token = 5e11 FLOP/s; / 1e12 peak = 50%."""
    clock = iter([10.0, 12.0, 12.0])
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    meter = ThroughputMeter(flops_per_token=1e9, peak_flops=1e12)
    meter.add_tokens(1000)
    tokens_per_s, mfu = meter.read_and_reset()
    assert tokens_per_s == 500.0 and mfu == 0.5
    monkeypatch.undo()
    assert ThroughputMeter(1e9, None).read_and_reset()[1] is None


def _record(step, loss, total=10):
    return {"step": step, "total_steps": total, "loss": loss, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 100.0}


def test_jsonl_plain_lines_and_truncate_on_resume(tmp_path):
    out = io.StringIO()
    logger = MetricsLogger(tmp_path, stream=out, progress_bar=False)
    for step in (1, 5, 10):
        logger.log(_record(step, 1.0 / step))
    logger.truncate_after(5)  # a resume from step 5 forgets what the killed run logged after it
    logger.log(_record(10, 0.25))
    logger.log(_record(11, float("nan")))
    logger.close()
    records = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (5, 0.2), (10, 0.25), (11, None)]
    assert out.getvalue().splitlines()[0].startswith("step 1/10  loss 1.0000")
    assert "\r" not in out.getvalue()


def test_progress_bar_on_a_terminal(tmp_path):
    out = io.StringIO()
    logger = MetricsLogger(tmp_path, stream=out, progress_bar=True)
    logger.log(_record(5, 0.5))
    logger.log(_record(10, 0.25))
    logger.close()
    text = out.getvalue()
    assert text.startswith("\r[" + "#" * 12 + "." * 12 + "] step 5/10")
    assert text.endswith("\n") and text.count("\n") == 1  # one line, redrawn, closed at the end


def test_other_ranks_write_nothing(tmp_path):
    out = io.StringIO()
    logger = MetricsLogger(tmp_path, enabled=False, stream=out)
    logger.log(_record(1, 1.0))
    logger.close()
    assert not (tmp_path / METRICS_FILE).exists() and out.getvalue() == ""
