"""The MTP head under parallelize: its decoder layer is a block of its layer type (checkpointing,
compile and FSDP2 policies reach it; text layer indices keep meaning the tower's layers), FSDP2 at
world size 1 shards it as a unit and computes what the unsharded model does, and 2 gloo ranks train
it as one process with the same global batch does."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch

from assembler import build_model, load_spec
from assembler.hf.checkpoint import save_hf_checkpoint
from assembler.parallel.parallelize import blocks_to_checkpoint, iter_blocks, parallelize
from assembler.train.loop import train
from tests.torchrun import torchrun_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
MTP = "model.mtp={loss_weight: 0.5}"


def test_the_mtp_layer_is_the_last_block_of_its_layer_type():
    spec = load_spec(TINY, [MTP])
    blocks = list(iter_blocks(build_model(spec, device="meta")))
    assert [(name, kind) for name, _, kind in blocks[-2:]] == [("model.language_model.layers.3", "full"), ("mtp.layers.0", "full")]
    by_type = {"mode": "selective", "layers": ["full"]}
    assert blocks_to_checkpoint(blocks, by_type) == {"model.language_model.layers.3", "mtp.layers.0"}
    by_index = {"mode": "selective", "layers": [3]}
    assert blocks_to_checkpoint(blocks, by_index) == {"model.language_model.layers.3"}


def test_fsdp_world_size_one_shards_the_head_and_computes_as_unsharded(single_rank_group):
    spec = load_spec(TINY, [MTP, "parallel.fsdp.param_dtype=float32"])
    plain = build_model(spec, seed=0)
    sharded = parallelize(copy.deepcopy(plain), spec)
    from torch.distributed.fsdp import FSDPModule

    assert isinstance(sharded.mtp.layers[0], FSDPModule)
    assert sharded.mtp.layers[0].parallel_policy.sharded

    ids = torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(0))
    expected, got = plain(ids, labels=ids), sharded(ids, labels=ids)
    torch.testing.assert_close(got.mtp_loss, expected.mtp_loss, rtol=1e-6, atol=0)
    got.training_loss.backward()
    expected.training_loss.backward()
    plain_grads = dict(plain.named_parameters())
    for name, parameter in sharded.named_parameters():
        if name.startswith("mtp."):
            torch.testing.assert_close(parameter.grad.full_tensor(), plain_grads[name].grad, rtol=1e-5, atol=1e-7)


SMALL = ["train.steps=2", "train.checkpoint.every=0", "train.log_every=1", "train.tokens_per_step=64",
         "data.packing.length=64", "train.seed=0", "parallel.fsdp.param_dtype=float32", "train.dtype=float32", MTP]


@pytest.mark.slow
def test_two_gloo_ranks_train_the_head_as_one_process(tmp_path):
    init = tmp_path / "init"  # one starting point: the ranks load it through the meta-device path, shard by shard
    spec = load_spec(TINY, SMALL)
    save_hf_checkpoint(build_model(spec, seed=0), init, spec, dtype=torch.float32)
    common = [*SMALL, f"train.init_from={init}", "train.export_hf=false"]

    torchrun_cli(["train", str(TINY), *[f"-o{o}" for o in common + ["train.grad_accumulation=1"]],
                  "--output-dir", str(tmp_path / "two")], cwd=tmp_path)

    one = train(load_spec(TINY, common + ["train.grad_accumulation=2"]), output_dir=tmp_path / "one", stream=io.StringIO())
    two_records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    one_records = [json.loads(line) for line in (one.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two_records] == [1, 2]
    for two_rank, one_process in zip(two_records, one_records, strict=True):
        for key in ("loss", "mtp_loss"):
            assert abs(two_rank[key] - one_process[key]) <= 1e-6 * abs(one_process[key]), (key, two_rank, one_process)
