"""FSDP2 on 2 CPU ranks (gloo): loading keeps each rank's shard of the checkpoint, and exporting
from the sharded model writes the same bytes one unsharded rank writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from assembler import spec_from_hf_config
from assembler.model.build import build_model
from assembler.hf.checkpoint import load_hf_checkpoint, save_hf_checkpoint
from assembler.parallel.distributed import leave_process
from tests.free_port import free_port

WORLD_SIZE = 2
SHARD_SIZE = "40KB"


def _rank_main(rank: int, port: int, source: str, out: str, report: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        spec = spec_from_hf_config(source)
        model = build_model(spec, device="meta")
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        for layer in model.model.language_model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        model.to_empty(device="cpu")
        load_hf_checkpoint(model, source, spec)
        weight = model.model.language_model.layers[0].mlp.up_proj.weight
        local_rows = weight.to_local().shape[0] if isinstance(weight, DTensor) else -1
        save_hf_checkpoint(model, out, spec, source_dir=source, shard_size=SHARD_SIZE)
        if rank == 0:
            Path(report).write_text(json.dumps({"local_rows": local_rows, "global_rows": weight.shape[0]}))
    finally:
        dist.destroy_process_group()
    leave_process(0)  # as `assemble train` ranks do: torch's exit-time teardown can abort a finished rank


@pytest.mark.slow
def test_fsdp2_load_and_export_equal_one_rank(tmp_path):
    # imported here, not at module level: the spawned ranks import this module and need no transformers
    from tests.hf_checkpoint_fixtures import add_mtp_tensors, make_source_folder

    source = make_source_folder(tmp_path / "source")
    add_mtp_tensors(source)
    spec = spec_from_hf_config(source)
    single = build_model(spec, device="meta")
    load_hf_checkpoint(single, source, spec)
    one_rank = save_hf_checkpoint(single, tmp_path / "one_rank", spec, source_dir=source, shard_size=SHARD_SIZE)

    report = tmp_path / "report.json"
    mp.spawn(_rank_main, args=(free_port(), str(source), str(tmp_path / "two_ranks"), str(report)), nprocs=WORLD_SIZE)

    shape = json.loads(report.read_text())
    assert shape["local_rows"] == shape["global_rows"] // WORLD_SIZE  # really sharded
    two_ranks = tmp_path / "two_ranks"
    assert sorted(p.name for p in two_ranks.iterdir()) == sorted(p.name for p in one_rank.iterdir())
    for path in one_rank.iterdir():
        assert (two_ranks / path.name).read_bytes() == path.read_bytes(), path.name
