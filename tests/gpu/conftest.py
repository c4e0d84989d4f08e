"""GPU tests (marked `gpu`): skipped where there is no CUDA device. Test files that need fla (the
`fast` delta rule and conv1d kernels) skip themselves without it (`pytest.importorskip` at their
top); the others, such as `assemble train` on the auto backend, run without it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the device machine: benchmarks/gpu_suite.sh)")
