"""`assemble train` with `model.mtp`: the MTP loss is logged apart (metrics.jsonl and the progress
line), normalised by the step's count of MTP targets over all micro-batches, and falls; the run's
checkpoint and HF export hold the trained head under the released names."""

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from assembler import load_hf_checkpoint, load_spec
from assembler.model.build import build_model
from assembler.data import build_loader
from assembler.train.checkpoint import latest_checkpoint, load_model_weights
from assembler.train.loop import train
from blocks.constants import IGNORE_INDEX
from tests.mtp_reference import RELEASED_MTP_NAMES

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
OVERRIDES = [f"train.steps={STEPS}", "train.grad_accumulation=2", "train.tokens_per_step=64", "data.packing.length=64",
             "train.log_every=1", "train.checkpoint.every=6", "train.schedule.warmup_steps=2", "train.optimizer.lr=1.0e-2",
             "model.mtp={loss_weight: 1.0}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mtp_run")
    source = tmp / "texts.jsonl"  # documents of very different lengths: micro-batches differ in target counts
    source.write_text("".join(json.dumps({"text": "red circle blue square " * n}) + "\n" for n in (1, 9, 2, 6, 3, 11, 1, 4)))
    spec = load_spec(ROOT / "specs" / "qwen3_5_tiny.yaml", OVERRIDES + [f"data.sources=[{{path: {source}}}]"])
    stream = io.StringIO()
    result = train(spec, output_dir=tmp / "run", stream=stream)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return spec, result, records, stream.getvalue()


def _mtp_targets(micro_batch) -> int:
    """Positions t whose token t+2 is a target of t's document: shift_labels[t+1] kept and t+1 in t's document."""
    labels, seq_idx = micro_batch["shift_labels"][0].tolist(), micro_batch["packing"].seq_idx[0].tolist()
    return sum(1 for t in range(len(labels) - 1) if labels[t + 1] != IGNORE_INDEX and seq_idx[t + 1] == seq_idx[t])


def test_mtp_loss_is_logged_apart_and_falls(run):
    _, _, records, printed = run
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(isinstance(r["mtp_loss"], float) for r in records)
    assert f"mtp_loss {records[-1]['mtp_loss']:.4f}" in printed  # the progress line shows it
    first, last = records[0]["mtp_loss"], records[-1]["mtp_loss"]
    assert first > 11.0  # ≈ ln(248320) from random init
    assert last < 0.5 * first, f"the MTP loss only fell from {first:.3f} to {last:.3f}"
    assert all(abs(r["mtp_loss"] - r["loss"]) > 1e-6 for r in records)  # a loss of its own, not the main one again


def test_first_step_mtp_loss_is_normalised_by_every_micro_batchs_mtp_targets(run):
    spec, _, records, _ = run
    loader = build_loader(spec)
    micro_batches = [next(loader) for _ in range(2)]
    counts = [_mtp_targets(b) for b in micro_batches]
    assert len(set(counts)) > 1  # otherwise a per-micro-batch mean would give the same number
    model = build_model(spec, seed=spec.train["seed"])
    main = torch.tensor(sum(int((b["shift_labels"] != IGNORE_INDEX).sum()) for b in micro_batches))
    with torch.no_grad():
        expected = sum(model(**b, num_items_in_batch=main, num_mtp_items_in_batch=torch.tensor(sum(counts))).mtp_loss
                       for b in micro_batches)
        mean_of_means = sum(model(**b).mtp_loss for b in micro_batches) / 2
    assert records[0]["mtp_loss"] == float(expected)
    assert abs(float(mean_of_means) - float(expected)) > 1e-4


def test_checkpoint_and_export_hold_the_trained_head(run):
    spec, result, _, _ = run
    trained = build_model(spec, seed=1234)  # other weights: everything must come from the checkpoint
    load_model_weights(latest_checkpoint(result.run_dir / "checkpoints"), trained)
    fresh = build_model(spec, seed=spec.train["seed"])
    export = result.hf_export
    config = json.loads((export / "config.json").read_text())
    assert config["text_config"]["mtp_num_hidden_layers"] == 1
    index = json.loads((export / "model.safetensors.index.json").read_text())
    assert sorted(n for n in index["weight_map"] if n.startswith("mtp.")) == RELEASED_MTP_NAMES
    ours = dict(trained.named_parameters())
    for name in RELEASED_MTP_NAMES:
        with safe_open(str(export / index["weight_map"][name]), "pt") as f:
            written = f.get_tensor(name)
        assert written.dtype == torch.float32  # the tiny spec computes in fp32: its export is fp32
        assert torch.equal(written, ours[name].detach()), name
        assert not torch.equal(written, dict(fresh.named_parameters())[name].detach()), f"{name} was not trained"
    reloaded = build_model(spec, seed=4321)
    load_hf_checkpoint(reloaded, export, spec)
    for name, parameter in reloaded.named_parameters():
        assert torch.equal(parameter, ours[name]), name


def test_the_flops_per_token_count_the_head():
    """MFU's numerator: the head's matmul weights (6·N), its attention layer's scores (12·Hq·D·S) and
    the second LM-head pass (6·V·H); tiny spec: H 64, V 248320, 4 query heads of 32, MLP 128."""
    from assembler.train.metrics import flops_per_token

    seq = 64
    without, with_mtp = load_spec(ROOT / "specs" / "qwen3_5_tiny.yaml"), load_spec(ROOT / "specs" / "qwen3_5_tiny.yaml", ["model.mtp={}"])
    head_matmul_weights = 128 * 64 + (256 + 64 + 64) * 64 + 64 * 128 + 3 * 128 * 64  # fc, q(+gate)/k/v, o, gate/up/down
    expected = 6 * head_matmul_weights + 12 * 4 * 32 * seq + 6 * 248320 * 64
    got = (flops_per_token(build_model(with_mtp, device="meta"), with_mtp.model["text"], seq)
           - flops_per_token(build_model(without, device="meta"), without.model["text"], seq))
    assert got == expected
