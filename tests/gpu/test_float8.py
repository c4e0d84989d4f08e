"""Float8 matmuls on a GPU (`parallel.precision.matmul: float8_rowwise`, torchao): `assemble train`
of the tiny spec with every block type compiled fullgraph under FSDP2 (a world of one) trains,
and its first losses stay within float8 rounding of the same run in bf16.

Step 1 computes on the same weights, so its loss differs by the forward's float8 rounding alone:
the CPU test's bound, 1e-3 relative (tests/test_float8.py). Later steps also carry the earlier
updates, made from gradients ~5% apart (float8 rounding of the backward's operands), during the
schedule's warm-up: 1e-2. A float8 path that dropped a scale would be off by far more.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
pytest.importorskip("torchao", reason="float8 matmuls need torchao (bash ../shared/gpu/wheels.sh torchao==0.18.0)")

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
STEPS = 3
FIRST_LOSS_RTOL, LATER_LOSS_RTOL = 1e-3, 1e-2
OVERRIDES = [
    "parallel.fsdp.param_dtype=bfloat16", "train.log_every=1", f"train.steps={STEPS}", "train.checkpoint.every=0",
    "train.export_hf=false", *[f"parallel.compile.{kind}={{enabled: true, fullgraph: true}}" for kind in ("linear", "full", "vision")],
]


def _train(run_dir: Path, matmul: str) -> tuple[dict[int, float], str]:
    command = [sys.executable, str(ROOT / "cli.py"), "train", str(TINY), *[f"-o{o}" for o in OVERRIDES],
               f"-oparallel.precision.matmul={matmul}", "--output-dir", str(run_dir)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = {record["step"]: record["loss"] for record in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    return losses, result.stdout + result.stderr


def test_float8_trains_compiled_and_sharded_within_float8_rounding_of_bf16(tmp_path):
    bf16, _ = _train(tmp_path / "bf16", "param_dtype")
    float8, log = _train(tmp_path / "float8", "float8_rowwise")
    assert "matmuls: float8 with rowwise scales (torchao)" in log
    assert sorted(float8) == list(range(1, STEPS + 1))
    for step in float8:
        bound = FIRST_LOSS_RTOL if step == 1 else LATER_LOSS_RTOL
        assert abs(float8[step] - bf16[step]) / abs(bf16[step]) < bound, (step, float8[step], bf16[step])
    assert float8 != bf16  # the matmuls did run in float8
