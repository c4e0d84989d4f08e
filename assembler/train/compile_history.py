"""A run's torch.compile shape decisions kept with the run, so that a resumed run compiles the
graphs the run it continues had.

Dynamo compiles a block for the sizes of its first call, and when a later call brings another size
it compiles once more with that dimension dynamic ("automatic dynamic shapes"). A run's rows vary
(documents per row, image patches), so from its second step on a run computes with dynamic graphs.
A run resumed at step 11 would start over: static graphs for step 11's sizes, which the run it
continues never used, with their own fusions and roundings. On one H200 (2026-12-03, the 4B spec,
BENCHMARKS.md) a resume differed from the uninterrupted run from its first step (worst relative
loss difference 3.3e-2), while two uninterrupted runs agreed bitwise and the resumed rows were the
same (checked on the CPU): the compiled graphs are what is left that a resume changes, and this
module takes that difference away (the GPU kill cell says whether it was the whole cause).

PyTorch keeps these decisions between processes itself (profile-guided automatic dynamic shapes,
`torch._dynamo.pgo`): when `torch.compiler.config.job_id` names the job, every compile writes which
dimensions turned out dynamic to the Inductor cache folder (one file per job and rank), and a
later process of the same job compiles those dynamic from its first call, which also finds the
run's compiled graphs in Inductor's cache instead of compiling new ones.

The job is the run: a new id when a run starts in a folder without one, kept in the folder
(COMPILE_JOB_FILE), so a resume in that folder, or in a copy or a move of it, on a machine that
kept `TORCHINDUCTOR_CACHE_DIR` (see the README's "Restarts"), compiles as the run did. A new run,
even in the path of a deleted one, starts from static graphs like any fresh run: two fresh runs of
one spec in two folders compute the same bits.

The limit: the resumed process knows every dimension the run found dynamic before it stopped,
also those it found after the step resumed from. A dimension that first varied between that step
and the stop (rare: a packed row's document count and longest document vary from step 2, a vision
call's patch count from the second image row) makes the resumed steps before that point compute
with a more general graph than the run did.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import torch

from assembler.common.durable_files import replace_durably

JOB_PREFIX = "assemble-run-"
COMPILE_JOB_FILE = "compile_job"  # in the run folder: the job id its processes compile under


def new_compile_job() -> str:
    """A job id no other run has."""
    return JOB_PREFIX + uuid.uuid4().hex[:16]


def saved_compile_job(run_dir: Path) -> str | None:
    """The job id kept in `run_dir`, None when it holds none (a new run)."""
    saved = Path(run_dir) / COMPILE_JOB_FILE
    return saved.read_text(encoding="utf-8").strip() or None if saved.is_file() else None


def save_compile_job(run_dir: Path, job: str) -> None:
    """Keep the run's job id in its folder (rank 0, beside the resolved spec)."""
    replace_durably(Path(run_dir) / COMPILE_JOB_FILE, (job + "\n").encode("utf-8"))


def compile_as_job(job: str) -> None:
    """Make this process's compiles read and write `job`'s shape decisions (before anything compiles)."""
    torch.compiler.config.job_id = job
