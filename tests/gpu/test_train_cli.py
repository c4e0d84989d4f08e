"""`assemble train` itself on a GPU: one process and `torchrun --nproc-per-node 1`, the same FSDP2
code (a world of one), with images and bf16 compute; a checkpoint, a resume, the HF export.

Issue 11's table: on 4d923b4 the one process died in FlashAttention (fp32 q/k/v under autocast)
and torchrun with images died in the patch merger's backward (freed root-unit storage).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
OVERRIDES = ["parallel.fsdp.param_dtype=bfloat16", "train.log_every=1", "train.checkpoint.every=2"]


def _train(launcher: list[str], run_dir: Path, steps: int) -> subprocess.CompletedProcess:
    args = ["train", str(TINY), *[f"-o{o}" for o in [*OVERRIDES, f"train.steps={steps}"]], "--output-dir", str(run_dir)]
    return subprocess.run([*launcher, str(ROOT / "cli.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record["loss"] for record in map(json.loads, lines)}


@pytest.mark.parametrize("launcher", [[sys.executable], [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]],
                         ids=["one-process", "torchrun"])
def test_train_checkpoint_resume_export_with_images(tmp_path, launcher):
    run_dir = tmp_path / "run"
    first = _train(launcher, run_dir, steps=2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "FSDP2 over cuda" in first.stdout and "ops (auto, cuda): fast attention" in first.stdout
    resumed = _train(launcher, run_dir, steps=4)  # resumes from step 2, trains 3-4, exports
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and (run_dir / "hf" / "config.json").is_file()
    losses = _losses(run_dir)
    assert sorted(losses) == [1, 2, 3, 4] and losses[4] < losses[1]
