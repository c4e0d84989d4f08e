"""`assemble bench` times `assemble train`'s own step: checked on the CPU with the CUDA timing calls
stubbed out (the numbers are not the point; which step runs on which rows is)."""

from pathlib import Path

import torch

import assembler.bench.measure as measure
import assembler.bench.run as run
from assembler import load_spec
from assembler.data import build_loader
from assembler.parallel.distributed import World

TINY = Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml"


def test_bench_drives_the_training_step_on_synthetic_and_data_rows(monkeypatch):
    monkeypatch.setattr(run.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(run, "init_world", lambda: World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    for name in ("synchronize", "reset_peak_memory_stats", "empty_cache"):
        monkeypatch.setattr(measure.torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(measure.torch.cuda, "max_memory_allocated", lambda *a, **k: 0)
    monkeypatch.setattr(measure.torch.cuda, "get_device_name", lambda *a, **k: "cpu stand-in")
    monkeypatch.setattr(measure, "peak_flops", lambda device: None)
    seen = []
    real_step = run.training_step

    def recording_step(model, optimizer, scheduler, micro_batches, **kwargs):
        seen.append(micro_batches[0]["input_ids"])
        return real_step(model, optimizer, scheduler, micro_batches, **kwargs)

    monkeypatch.setattr(run, "training_step", recording_step)
    spec = load_spec(TINY)
    rows = run.bench_spec(spec, [128], layouts=("packed", "one-document", "data"), steps=2, warmup=1, profile=False,
                          label="ours")

    assert [r.label for r in rows][1:] == ["ours, one document", "ours, the spec's data"]
    assert rows[0].label.startswith("ours, packed ")
    assert [r.tokens_per_step for r in rows] == [128, 128, spec.train["tokens_per_step"]]
    assert all(r.error is None and r.tokens_per_s > 0 for r in rows)
    # The data rows are the loader's, in its order, one per step (1 warm-up + 2 timed).
    loader = build_loader(spec)
    expected = [next(loader)["input_ids"] for _ in range(3)]
    assert all(torch.equal(got, want) for got, want in zip(seen[-3:], expected))
    assert not torch.equal(expected[0], expected[1])
