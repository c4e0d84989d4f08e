"""bf16 master parameters (`train.dtype: bfloat16`) under FSDP2 with the default
`parallel.fsdp.fp32_params`: the kept parameters stay fp32 masters, replicated outside FSDP2's
units, every other master is bf16.

The regression: on an H200, `assemble bench specs/qwen3_5_4b.yaml -o train.dtype=bfloat16` died in
FSDP2's first forward ("FSDP expects uniform original parameter dtype but got {torch.float32,
torch.bfloat16}"). It reproduces on the CPU at world size 1 (gloo), with a bf16 and with an fp32
`param_dtype`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from assembler import build_model, load_spec
from assembler.parallel.parallelize import parallelize
from assembler.train.checkpoint import checkpoint_folder
from tests.torchrun import torchrun_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
# The default patterns: only these stay fp32 (dt_bias and conv1d.weight are bf16 masters like the rest).
FP32_IN_LINEAR_ATTN = ("A_log", "norm.weight")


def _expected_fp32(model: torch.nn.Module) -> set[str]:
    names = {name for name, _ in model.named_parameters()}
    kept = {name for name in names if ".linear_attn." in name and name.endswith(FP32_IN_LINEAR_ATTN)}
    assert len(kept) == 3 * len(FP32_IN_LINEAR_ATTN)  # the tiny spec's three linear layers
    return kept


@pytest.mark.parametrize("param_dtype", ["bfloat16", "float32"])
def test_bf16_masters_keep_fp32_params_fp32_and_replicated(single_rank_group, param_dtype):
    spec = load_spec(TINY, [f"parallel.fsdp.param_dtype={param_dtype}", "train.dtype=bfloat16"])
    model = build_model(spec, seed=0, dtype=torch.bfloat16)
    fp32 = _expected_fp32(model)
    parallelize(model, spec)  # raised FSDP2's "uniform original parameter dtype" AssertionError in forward

    masters = {name: param.dtype for name, param in model.named_parameters()}
    assert {name for name, dtype in masters.items() if dtype == torch.float32} == fp32
    assert {dtype for name, dtype in masters.items() if name not in fp32} == {torch.bfloat16}
    assert model.model.language_model.layers[0].parallel_policy.replicated == ["linear_attn.A_log", "linear_attn.norm.weight"]
    assert model.model.language_model.layers[3].parallel_policy.replicated == []  # a full-attention layer

    ids = torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(0))
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = {name: param.grad for name, param in model.named_parameters()}
    assert all(grads[name] is not None and grads[name].dtype == torch.float32 for name in fp32)
    in_proj = "model.language_model.layers.0.linear_attn.in_proj_qkv.weight"
    assert grads[in_proj] is not None and grads[in_proj].dtype == torch.bfloat16


def test_bf16_masters_keep_an_fp32_param_outside_the_blocks(single_rank_group):
    # The final norm would share the root unit with the bf16 lm_head and embeddings (refused before
    # replication, as FSDP2 asserts one master dtype per unit): replicated, it stays fp32 and trains.
    spec = load_spec(TINY, ["parallel.fsdp.param_dtype=bfloat16", "train.dtype=bfloat16",
                            "parallel.fsdp.fp32_params=['*.linear_attn.A_log', 'model.language_model.norm.weight']"])
    model = build_model(spec, seed=0, dtype=torch.bfloat16)
    parallelize(model, spec)
    norm = model.model.language_model.norm.weight
    assert type(norm) is torch.nn.Parameter and norm.dtype == torch.float32
    ids = torch.randint(0, 1000, (1, 24), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    assert norm.grad is not None and norm.grad.dtype == torch.float32


@pytest.mark.slow
def test_cli_trains_bf16_masters_under_torchrun(tmp_path):
    """The CLI path of the H200 failure (one rank, FSDP2 over gloo); the checkpoint's masters are
    fp32 exactly for the kept parameters."""
    run_dir = tmp_path / "run"
    torchrun_cli(["train", str(TINY), "-o", "train.dtype=bfloat16", "-o", "parallel.fsdp.param_dtype=bfloat16",
                  "-o", "train.steps=2", "-o", "train.checkpoint.every=2", "-o", "train.log_every=1",
                  "-o", "train.tokens_per_step=64", "-o", "data.packing.length=64", "-o", "train.export_hf=false",
                  "--output-dir", str(run_dir)], tmp_path, ranks=1)

    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    metadata = FileSystemReader(str(checkpoint_folder(run_dir / "checkpoints", 2))).read_metadata()
    saved = {key.removeprefix("model."): item.properties.dtype for key, item in metadata.state_dict_metadata.items()
             if key.startswith("model.")}
    fp32 = _expected_fp32(build_model(load_spec(TINY), device="meta"))
    assert {name for name, dtype in saved.items() if dtype == torch.float32} == fp32
    assert {dtype for name, dtype in saved.items() if name not in fp32} == {torch.bfloat16}
