"""Two ranks on the CPU (torchrun, gloo, FSDP2 from `parallel:`): the loop shards the data, keeps
one metrics file, writes one sharded checkpoint both ranks contribute to, and resumes exactly."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from assembler.train.checkpoint import COMPLETE_MARKER, checkpoint_folder

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
# Captions only: every row then holds an image on both ranks. With text-only rows on one rank and
# images on the other, the vision tower's FSDP all-gathers would run on one rank only (the model
# skips the tower when a row has no image), which FSDP cannot do.
ARGS = [
    "-o", "train.steps=4", "-o", "train.checkpoint.every=2", "-o", "train.log_every=1",
    "-o", "train.tokens_per_step=64", "-o", "data.packing.length=64", "-o", "train.export_hf=false",
    "-o", "data.sources=[{path: data/tiny/captions.jsonl}]",
]


def _torchrun(run_dir: Path) -> subprocess.CompletedProcess:
    code = "import sys; sys.path.insert(0, sys.argv.pop(1)); from cli import assemble; assemble()"
    launcher = run_dir.parent / "launch.py"
    launcher.write_text(code)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(launcher), str(ROOT),
               "train", str(TINY), *ARGS, "--output-dir", str(run_dir)]
    result = subprocess.run(command, cwd=run_dir.parent, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    return result


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_two_ranks_checkpoint_and_resume_exactly(tmp_path):
    run_dir = tmp_path / "run"
    first = _torchrun(run_dir)
    assert first.stdout.count("done in") == 1  # rank 0 alone reports
    straight = _losses(run_dir)
    assert [step for step, _ in straight] == [1, 2, 3, 4]

    last = checkpoint_folder(run_dir / "checkpoints", 4)
    names = {p.name for p in last.iterdir()}
    assert {COMPLETE_MARKER, "trainer_state_rank0.pt", "trainer_state_rank1.pt", "__0_0.distcp", "__1_0.distcp"} <= names

    shutil.rmtree(last)  # as if the run had died after step 2's checkpoint
    resumed = _torchrun(run_dir)
    assert f"resumed from {checkpoint_folder(run_dir / 'checkpoints', 2)} at step 2" in resumed.stdout
    assert _losses(run_dir) == straight
