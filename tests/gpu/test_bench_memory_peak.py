"""`assemble bench --memory-peak` on a real allocator trace: the replayed peak is the allocator's own
peak of requested bytes for that step, and the bytes alive then are charged to the lines that allocated them."""

import pytest
import torch

from assembler.bench.memory_peak import BEFORE_STEP, mark, record_memory_peak

pytestmark = pytest.mark.gpu
MIB = 2**20


def _keep_activations(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(256 * MIB // 4, device=x.device) + x.sum()  # 256 MiB alive until the backward frees it


def test_replayed_peak_is_the_allocators_peak_and_names_its_sites():
    weight = torch.randn(1024, 1024, device="cuda", requires_grad=True)
    optimizer = torch.optim.AdamW([weight], fused=True)

    def step():
        hidden = (weight * 2).sum() * _keep_activations(weight)
        loss = hidden.square().mean()
        mark("backward")
        loss.backward()
        mark("optimizer")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # optimizer state exists before the measured step, as in the benchmark
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    peak = record_memory_peak(step)
    assert peak.peak_gib * 2**30 == torch.cuda.memory_stats()["requested_bytes.all.peak"]
    sites = dict(peak.sites)
    assert sites[BEFORE_STEP] * 2**30 >= 3 * weight.numel() * 4  # the weight and AdamW's two states
    keep_site = next(site for site in sites if site.endswith(" _keep_activations"))
    assert sites[keep_site] * 2**30 >= 256 * MIB
    assert peak.phase in ("forward", "backward")
