"""A resumed run compiles with the shape decisions of the run it continues (issue 23): `assemble
train` names its torch.compile job after the run folder, and a later process of that job compiles
the dimensions the run found dynamic as dynamic from its first call (PyTorch's profile-guided
automatic dynamic shapes), where a new run folder starts from static graphs."""

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from assembler import load_spec
from assembler.train.compile_history import COMPILE_JOB_FILE, compile_job_of, keep_compile_decisions_with_run
from assembler.train.loop import train

ROOT = Path(__file__).resolve().parents[1]

# One process of a run: compile a norm-like function, call it at the given row counts, print how
# many graphs Dynamo made.
PROCESS = """
import sys, torch
from torch._dynamo.utils import counters
from assembler.train.compile_history import keep_compile_decisions_with_run
keep_compile_decisions_with_run(sys.argv[1])
weight = torch.ones(32)
norm = torch.compile(lambda x: (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight).sum(0), fullgraph=True)
for rows in sys.argv[2:]:
    norm(torch.randn(int(rows), 32))
print(counters["stats"]["unique_graphs"])
"""


def _graphs(run_dir: Path, cache: Path, *rows: int) -> int:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROCESS, str(run_dir), *map(str, rows)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1])


def test_the_job_is_the_run_folder():
    assert compile_job_of(Path("runs/a")) == compile_job_of(Path("runs/a").resolve())
    assert compile_job_of(Path("runs/a")) != compile_job_of(Path("runs/b"))


def test_a_resumed_process_compiles_the_dimensions_its_run_found_dynamic_at_once(tmp_path):
    cache = tmp_path / "inductor"
    # The run: a static graph for 8 rows, then a dynamic one when 16 arrive.
    assert _graphs(tmp_path / "run", cache, 8, 16, 24) == 2
    # Its resume: one dynamic graph from the first call, as the run computed from its second call on.
    assert _graphs(tmp_path / "run", cache, 40, 48) == 1
    # Another run folder learns on its own.
    assert _graphs(tmp_path / "other", cache, 40, 48) == 2


def test_assemble_train_names_the_compile_job_after_its_run_folder_and_a_copy_keeps_it(tmp_path):
    spec = load_spec(ROOT / "specs" / "qwen3_5_tiny.yaml", ["train.steps=1", "train.tokens_per_step=64", "data.packing.length=64",
                                                          "train.export_hf=false", "train.checkpoint.every=0"])
    result = train(spec, output_dir=tmp_path / "run", stream=io.StringIO())
    job = compile_job_of(result.run_dir)
    assert torch.compiler.config.job_id == job
    assert (result.run_dir / COMPILE_JOB_FILE).read_text().strip() == job
    # A resume of a copied (or moved) run folder continues the run's compile decisions, not the new path's.
    shutil.copytree(result.run_dir, tmp_path / "copy")
    assert keep_compile_decisions_with_run(tmp_path / "copy") == job != compile_job_of(tmp_path / "copy")
