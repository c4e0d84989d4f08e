"""Fixtures shared by the CPU tests, and the thread budget of a parallel run."""

import os

import pytest
import torch
import torch.distributed as dist

# Under pytest-xdist (the README's `-n auto`) each worker takes its share of the cores, and so do
# the training processes a test starts (they inherit OMP_NUM_THREADS): PyTorch's default of one
# thread per core in every worker oversubscribes the machine, which made the suite slower on two
# workers than on one (a 2-core machine: the tiny training fixture took 250 s instead of 74 s).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)


@pytest.fixture
def single_rank_group():
    """A one-rank gloo process group for the test (FSDP2 at world size 1), destroyed after it."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
