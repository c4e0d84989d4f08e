"""A run's torch.compile shape decisions kept with the run, so that a resumed run compiles the
graphs the run it continues had.

Dynamo compiles a block for the sizes of its first call, and when a later call brings another size
it compiles once more with that dimension dynamic ("automatic dynamic shapes"). A run's rows vary
(documents per row, image patches), so from its second step on a run computes with dynamic graphs.
A run resumed at step 11 would start over: static graphs for step 11's sizes, which the run it
continues never used, with their own fusions and roundings. On one H200 (2026-12-03, the 4B spec
on the tiny data, BENCHMARKS.md) such a resume differed from the uninterrupted run from its first
step (worst relative loss difference 3.3e-2), while two uninterrupted runs agreed bitwise and the
resumed rows were the same (checked on the CPU): the graphs are what a resume changed.

PyTorch keeps these decisions between processes itself (profile-guided automatic dynamic shapes,
`torch._dynamo.pgo`): when `torch.compiler.config.job_id` names the job, every compile writes which
dimensions turned out dynamic to the Inductor cache folder (one file per job and rank), and a
later process of the same job compiles those dynamic from its first call, which also finds the
run's compiled graphs in Inductor's cache instead of compiling new ones. The job here is the run:
named after its folder when the run starts and kept in it (COMPILE_JOB_FILE), so a resume in that
folder, or in a copy or a move of it, on a machine that kept `TORCHINDUCTOR_CACHE_DIR` (see the
README's "Restarts"), compiles as the run did.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from assembler.common.durable_files import replace_durably

JOB_PREFIX = "assemble-run-"
COMPILE_JOB_FILE = "compile_job"  # in the run folder: the job id its processes compile under


def compile_job_of(run_dir: Path) -> str:
    """The torch.compile job id of the run in `run_dir`: the same for every process of this run folder."""
    return JOB_PREFIX + hashlib.sha256(str(Path(run_dir).resolve()).encode("utf-8")).hexdigest()[:16]


def keep_compile_decisions_with_run(run_dir: Path) -> str:
    """Name this process's torch.compile job (before anything compiles): the id kept in `run_dir`
    when there is one (a resume, also of a copied folder), else the folder's own; returns the id."""
    saved = Path(run_dir) / COMPILE_JOB_FILE
    job = saved.read_text(encoding="utf-8").strip() if saved.is_file() else compile_job_of(run_dir)
    torch.compiler.config.job_id = job
    return job


def save_compile_job(run_dir: Path, job: str) -> None:
    """Keep the run's job id in its folder (rank 0, beside the resolved spec)."""
    replace_durably(Path(run_dir) / COMPILE_JOB_FILE, (job + "\n").encode("utf-8"))
