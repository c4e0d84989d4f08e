"""Fixtures shared by the CPU tests."""

import pytest
import torch.distributed as dist


@pytest.fixture
def single_rank_group():
    """A one-rank gloo process group for the test (FSDP2 at world size 1), destroyed after it."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
