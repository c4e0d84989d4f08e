"""MFU arithmetic (torchtitan's convention), the JSONL metrics file and the terminal display."""

import io
import json

import pytest
from torch import nn

from assembler.train.metrics import (
    METRICS_FILE, WARMUP_STEPS, MetricsLogger, StepTimer, attention_flops_per_token, flops_per_token, format_duration,
    _format_record, matmul_parameter_count, matmul_weight_flops_per_token,
)


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
    text = {"hidden_size": 8, "layers": ["linear", "full", "linear", "full"], "layer_types": {
        "linear": {"mixer": {"block": "gated_deltanet", "num_key_heads": 2}},  # linear attention: not counted
        "full": {"mixer": {"block": "gated_attention", "num_attention_heads": 4, "head_dim": 32}}}}
    seq = 1024
    assert flops_per_token(TinyLM(True), text, seq) == 6 * 864 + 12 * 2 * 4 * 32 * seq


def test_a_frozen_weight_counts_four_flops_per_token_not_six():
    # A frozen weight gets no gradient: forward (2) and the input's gradient (2) only. Tied: the
    # head's weight is the embedding's, counted once.
    model = TinyLM(tie=True)
    assert matmul_weight_flops_per_token(model) == 6 * (64 + 800)
    model.proj.weight.requires_grad_(False)
    assert matmul_weight_flops_per_token(model) == 4 * 64 + 6 * 800
    model.head.weight.requires_grad_(False)
    assert matmul_weight_flops_per_token(model) == 4 * (64 + 800)


def test_a_lora_runs_flops_count_the_frozen_base_at_four_and_its_adapters_at_six():
    from pathlib import Path

    from assembler import build_model, load_spec
    from assembler.train.trained_parameters import choose_trained_parameters

    spec = load_spec(Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml",
                     ["train.adapters={method: lora, rank: 2, targets: ['*']}"])
    model = build_model(spec, seed=0)
    full = flops_per_token(model, spec.model["text"], 256)
    choose_trained_parameters(model, spec)
    adapters = sum(p.numel() for name, p in model.named_parameters() if ".lora_" in name)
    base = matmul_parameter_count(model) - adapters
    matmul_layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    frozen = {id(m.weight): m.weight.numel() for m in model.modules()
              if isinstance(m, matmul_layers) and not m.weight.requires_grad}  # the tied head once
    assert sum(frozen.values()) == base and adapters > 0  # LoRA freezes every base weight
    # Before: 6 per base weight. After: 4 per (frozen) base weight, 6 per adapter weight.
    assert flops_per_token(model, spec.model["text"], 256) == full - 2 * base + 6 * adapters
    assert base == matmul_parameter_count(build_model(spec, device="meta"))


def test_the_4b_specs_flops_are_what_the_formula_gave_before_blocks_owned_them():
    """Pinned by hand from ARCHITECTURE.md's formula: the 4B spec has 8 gated-attention layers of
    16 heads x 256 dims; its 24 Gated DeltaNet layers and every SwiGLU add nothing beyond 6·N."""
    from pathlib import Path

    from assembler import load_spec
    from assembler.bench.workload import training_flops

    text = load_spec(Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_4b.yaml").model["text"]
    seq = 4096
    per_token = 8 * 12 * 16 * 256 * seq  # 1,610,612,736
    assert attention_flops_per_token(text, seq) == per_token
    assert training_flops(6 * 1_000_000, text, seq) == (6 * 1_000_000 + per_token) * seq


def test_steady_state_skips_the_warm_up_and_counts_the_step_alone():
    # Hand-computed: 3 warm-up steps (compile), then 4 steps of 1000 tokens in 0.5 s + 0.1 s of data.
    timer = StepTimer(flops_per_token=1e9, peak_flops=1e12)
    assert WARMUP_STEPS == 3
    for step_s in (30.0, 5.0, 2.0):
        timer.add_step(1000, step_s, 0.1)
    for _ in range(4):
        timer.add_step(1000, 0.5, 0.1)
    steady = timer.steady_state()
    assert steady.steps == 4 and steady.tokens_per_s == pytest.approx(2000.0) and steady.mfu == pytest.approx(2.0)
    assert steady.data_share == pytest.approx(0.1 / 0.6)
    assert StepTimer(1e9, None).steady_state() is None


def test_interval_throughput_and_eta():
    timer = StepTimer(flops_per_token=1e9, peak_flops=None)
    for _ in range(5):
        timer.add_step(600, 0.5, 0.1)
    interval = timer.read_interval(steps_left=10)
    assert interval["tokens_per_s"] == pytest.approx(1000.0) and "mfu" not in interval
    assert interval["eta_s"] == pytest.approx(6.0)  # 10 steps of 0.6 s
    assert format_duration(6.0) == "6s" and format_duration(185) == "3m05s" and format_duration(3720) == "1h02m"


def test_the_eta_leaves_out_the_warm_up_steps():
    """The first step (compile, first touch of memory) is many times a steady one: an ETA from it
    said 12m34s for a 167 s run."""
    timer = StepTimer(flops_per_token=1e9, peak_flops=None)
    timer.add_step(600, 30.0, 0.0)
    assert timer.read_interval(steps_left=99)["eta_s"] is None
    for _ in range(WARMUP_STEPS - 1):
        timer.add_step(600, 1.0, 0.0)
    assert timer.read_interval(steps_left=97)["eta_s"] is None
    timer.add_step(600, 0.5, 0.1)
    assert timer.read_interval(steps_left=10)["eta_s"] == pytest.approx(6.0)  # 10 steps of 0.6 s, the one steady step's
    assert "ETA" not in _format_record({"step": 1, "total_steps": 10, "loss": 1.0, "eta_s": None})


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
