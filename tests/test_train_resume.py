"""Exact resume (issue 5, done-when 3): 2N steps straight versus N steps, a SIGKILL, and a resume to
2N give bitwise identical losses at every step on CPU, the same data order and the same weights.

Only the killed run is a subprocess (it must be SIGKILLed); the straight and resumed runs run in
this process, which also shows a resume in another process continues bitwise.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from click.testing import CliRunner

from assembler import load_spec
from assembler.model.build import build_model
from assembler.train.checkpoint import COMPLETE_MARKER, checkpoint_folder, load_model_weights
from assembler.cli.train import train_command

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
N = 3
SMALL = [
    "-o", f"train.steps={2 * N}", "-o", f"train.checkpoint.every={N}", "-o", "train.checkpoint.keep_last=3",
    "-o", "train.log_every=1", "-o", "train.export_hf=false",
    "-o", "train.tokens_per_step=64", "-o", "data.packing.length=64",
]


def _args(run_dir: Path) -> list[str]:
    return [str(TINY), *SMALL, "--output-dir", str(run_dir)]


def _train_here(run_dir: Path):
    result = CliRunner().invoke(train_command, _args(run_dir))
    assert result.exit_code == 0, result.output
    return result


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"metrics.jsonl repeats or reorders steps: {steps}"
    return {r["step"]: r["loss"] for r in records}


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    model = build_model(load_spec(TINY), seed=123)
    load_model_weights(checkpoint, model)
    return model.state_dict()


@pytest.mark.slow
def test_sigkill_and_resume_equals_straight_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _train_here(straight)

    code = "from cli import assemble; assemble()"
    proc = subprocess.Popen([sys.executable, "-c", code, "train", *_args(killed)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = checkpoint_folder(killed / "checkpoints", N) / COMPLETE_MARKER
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None, f"the run ended before its step-{N} checkpoint: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "no step-N checkpoint within 10 minutes"
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed; the test needs a live process"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (checkpoint_folder(killed / "checkpoints", 2 * N) / COMPLETE_MARKER).exists()

    resumed = _train_here(killed)  # no --resume: the run folder's latest complete checkpoint
    assert f"resumed from {checkpoint_folder(killed / 'checkpoints', N)} at step {N}" in resumed.output

    expected = _losses(straight)
    assert sorted(expected) == list(range(1, 2 * N + 1))
    assert _losses(killed) == expected  # bitwise: floats compared with ==
    assert expected[2 * N] < expected[1]

    # Same final weights and the same data position: the data order was the straight run's.
    final_straight = checkpoint_folder(straight / "checkpoints", 2 * N)
    final_resumed = checkpoint_folder(killed / "checkpoints", 2 * N)
    a, b = _weights(final_straight), _weights(final_resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    data_a = torch.load(final_straight / "trainer_state_rank0.pt", weights_only=False)["data"]
    data_b = torch.load(final_resumed / "trainer_state_rank0.pt", weights_only=False)["data"]
    assert data_a == data_b and (data_a["epoch"], data_a["row"]) != (0, 0)


def test_a_vision_tower_that_never_had_a_gradient_resumes(tmp_path):
    """Text-only data on the vision-language spec: AdamW holds no state for the tower's parameters,
    so the checkpoint has none; the resume must not ask for it (it did: 'Missing key ...
    optimizer.state.model.visual...'), and continues bitwise, the tower still without a state."""
    import io

    from assembler.train.loop import train

    chats = ROOT / "specs" / "data" / "tiny" / "chats.jsonl"
    small = [f"data.sources=[{{path: {chats}}}]", "train.checkpoint.every=1", "train.tokens_per_step=64",
             "data.packing.length=64", "train.export_hf=false", "train.log_every=1"]
    straight = train(load_spec(TINY, [*small, "train.steps=4"]), output_dir=tmp_path / "straight", stream=io.StringIO()).losses
    train(load_spec(TINY, [*small, "train.steps=2"]), output_dir=tmp_path / "resumed", stream=io.StringIO())
    trainer_state = torch.load(tmp_path / "resumed" / "checkpoints" / "step_000002" / "trainer_state_rank0.pt", weights_only=False)
    assert trainer_state["stateless"] and all(name.startswith("model.visual.") for name in trainer_state["stateless"])
    resumed = train(load_spec(TINY, [*small, "train.steps=4"]), output_dir=tmp_path / "resumed", stream=io.StringIO()).losses
    assert resumed == {3: straight[3], 4: straight[4]}
