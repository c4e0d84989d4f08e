"""A resumed run compiles with the shape decisions of the run it continues (issue 23): `assemble
train` gives each new run a torch.compile job id, kept in its folder, and a later process of that
job compiles the dimensions the run found dynamic as dynamic from its first call (PyTorch's
profile-guided automatic dynamic shapes), where a new run starts from static graphs."""

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from assembler import load_spec
from assembler.train.compile_history import COMPILE_JOB_FILE, new_compile_job, saved_compile_job
from assembler.train.loop import train

ROOT = Path(__file__).resolve().parents[1]

# One process of a run: compile a norm-like function, call it at the given row counts, print how
# many graphs Dynamo made.
PROCESS = """
import sys, torch
from torch._dynamo.utils import counters
from assembler.train.compile_history import compile_as_job
compile_as_job(sys.argv[1])
weight = torch.ones(32)
norm = torch.compile(lambda x: (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight).sum(0), fullgraph=True)
for rows in sys.argv[2:]:
    norm(torch.randn(int(rows), 32))
print(counters["stats"]["unique_graphs"])
"""


def _graphs(job: str, cache: Path, *rows: int) -> int:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROCESS, job, *map(str, rows)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1])


def test_a_resumed_process_compiles_the_dimensions_its_run_found_dynamic_at_once(tmp_path):
    cache, job = tmp_path / "inductor", new_compile_job()
    # The run: a static graph for 8 rows, then a dynamic one when 16 arrive.
    assert _graphs(job, cache, 8, 16, 24) == 2
    # Its resume: one dynamic graph from the first call, as the run computed from its second call on.
    assert _graphs(job, cache, 40, 48) == 1
    # Another run learns on its own.
    assert _graphs(new_compile_job(), cache, 40, 48) == 2


def test_a_run_keeps_its_compile_job_in_its_folder_and_a_new_run_gets_a_new_one(tmp_path):
    spec = load_spec(ROOT / "specs" / "qwen3_5_tiny.yaml", ["train.steps=1", "train.tokens_per_step=64", "data.packing.length=64",
                                                          "train.export_hf=false", "train.checkpoint.every=1"])
    run = train(spec, output_dir=tmp_path / "run", stream=io.StringIO()).run_dir
    job = saved_compile_job(run)
    assert job is not None and torch.compiler.config.job_id == job
    # A resume (two more steps), also of a copied or moved folder, compiles as the run's job.
    longer = load_spec(ROOT / "specs" / "qwen3_5_tiny.yaml", ["train.steps=2", "train.tokens_per_step=64", "data.packing.length=64",
                                                            "train.export_hf=false", "train.checkpoint.every=1"])
    shutil.copytree(run, tmp_path / "copy")
    resumed = train(longer, output_dir=tmp_path / "copy", stream=io.StringIO())
    assert sorted(resumed.losses) == [2]  # it resumed at step 1
    assert torch.compiler.config.job_id == job == saved_compile_job(tmp_path / "copy")
    # A new run in the path of a deleted one is a new job: it must not inherit the old run's shapes.
    shutil.rmtree(run)
    train(spec, output_dir=run, stream=io.StringIO())
    assert saved_compile_job(run) not in (None, job) and (run / COMPILE_JOB_FILE).is_file()
