"""A resumed GPU run continues the uninterrupted one bitwise (issue 23).

The tiny spec with every block type compiled, FSDP2 over a world of one (torchrun), bf16 compute,
text + images, two collating workers: a straight run of STEPS steps with a checkpoint at
RESUME_STEP (mid-epoch), against a copy of that run folder cut back to RESUME_STEP and resumed in
a new process. The resumed steps' losses and gradient norms, and the final weights, must equal
the straight run's to the last bit. TORCH_LOGS=recompiles is on in both, so a failure shows what
each process compiled.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
STEPS, RESUME_STEP = 8, 4
OVERRIDES = [
    "parallel.fsdp.param_dtype=bfloat16", "train.log_every=1", f"train.steps={STEPS}",
    f"train.checkpoint.every={RESUME_STEP}", "train.checkpoint.keep_last=2", "train.export_hf=false",
    "data.workers=2", *[f"parallel.compile.{kind}={{enabled: true, fullgraph: true}}" for kind in ("linear", "full", "vision")],
]


def _train(run_dir: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", str(ROOT / "cli.py"),
               "train", str(TINY), *[f"-o{o}" for o in OVERRIDES], "--output-dir", str(run_dir)]
    env = {**os.environ, "TORCH_LOGS": "recompiles"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _metrics(run_dir: Path) -> dict[int, dict]:
    return {record["step"]: record for record in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from assembler import build_model, load_spec
    from assembler.train.checkpoint import load_model_weights

    model = build_model(load_spec(TINY), seed=123)
    load_model_weights(checkpoint, model)
    return model.state_dict()


def test_resumed_run_equals_the_straight_run_bitwise(tmp_path):
    straight = tmp_path / "straight"
    straight_log = _train(straight)

    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step_{STEPS:06d}")
    kept = [line for line in (resumed / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= RESUME_STEP]
    (resumed / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    resumed_log = _train(resumed)
    assert f"at step {RESUME_STEP}" in resumed_log.stdout

    expected, got = _metrics(straight), _metrics(resumed)
    diagnosis = f"\nstraight:\n{straight_log.stderr[-4000:]}\nresumed:\n{resumed_log.stderr[-4000:]}"
    for step in range(RESUME_STEP + 1, STEPS + 1):
        assert (got[step]["loss"], got[step]["grad_norm"]) == (expected[step]["loss"], expected[step]["grad_norm"]), \
            f"step {step}: resumed {got[step]['loss']!r} / {got[step]['grad_norm']!r}, straight " \
            f"{expected[step]['loss']!r} / {expected[step]['grad_norm']!r}{diagnosis}"
    final = f"step_{STEPS:06d}"
    straight_weights, resumed_weights = _weights(straight / "checkpoints" / final), _weights(resumed / "checkpoints" / final)
    unequal = [name for name, tensor in straight_weights.items() if not torch.equal(tensor, resumed_weights[name])]
    assert not unequal, f"{len(unequal)} tensors differ after the resume, e.g. {unequal[:5]}{diagnosis}"
