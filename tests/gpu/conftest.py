"""GPU tests (marked `gpu`): skipped where there is no CUDA device or no fla (the `fast` backend's kernels)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _needs_cuda_and_fla():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the device machine: benchmarks/gpu_suite.sh)")
    pytest.importorskip("fla", reason="the fast backend needs flash-linear-attention (fla)")
