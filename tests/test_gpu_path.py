"""The causes of issue 11's GPU failures, reproduced and kept fixed on the CPU where they reproduce.

- One process on a CUDA machine trained unsharded under bf16 autocast, and autocast does not cast a
  custom op's inputs: FlashAttention received fp32 q/k/v. Now every CUDA run is FSDP2 (a world of
  one without torchrun) and computes in `parallel.fsdp.param_dtype`; a fast attention that would
  compute in fp32 is refused up front, and `ops.backend: auto` never picks it.
- The hf attention cut packed rows per document with a host sync (`cu_seqlens.tolist()`), which
  a fullgraph-compiled block cannot guard on ("Could not guard on data-dependent expression").
- The root FSDP unit was resharded after forward; FSDP2 re-gathers a unit in backward only from
  hooks on its forward's output tensors, and the model returns a dataclass, so the patch merger's
  weights were freed storage when backward read them (on CUDA). The root now stays unsharded.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

import assembler.parallel.distributed as distributed
from assembler import load_spec
from assembler.bench.workload import ImageSpec, synthetic_row
from assembler.model.build import build_model, check_ops_can_train, decide_auto_ops
from assembler.parallel.parallelize import parallelize
from assembler.spec.errors import UserError
from assembler.spec.loading import load_spec_from_dict
from assembler.train.loop import train
from blocks.ops import chosen_backends

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
FLAGSHIP = ROOT / "specs" / "qwen3_5_4b.yaml"


def test_a_plain_process_on_a_cuda_machine_joins_a_world_of_one(monkeypatch):
    # No torchrun environment, but CUDA present: the run must be sharded (mesh set), not a plain
    # unsharded process. NCCL is stood in for by gloo, CUDA by the CPU; the decision is what is tested.
    for name in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed.torch.cuda, "set_device", lambda device: None)
    joined = {}
    real_init = dist.init_process_group

    def init_process_group(backend, **kwargs):
        joined.update(backend=backend, **kwargs)
        real_init("gloo", store=kwargs["store"], rank=kwargs["rank"], world_size=kwargs["world_size"])

    monkeypatch.setattr(distributed.dist, "init_process_group", init_process_group)
    cpu_mesh = distributed.device_mesh
    monkeypatch.setattr(distributed, "device_mesh", lambda device: cpu_mesh(torch.device("cpu")))
    try:
        world = distributed.init_world()
        assert joined["backend"] == "nccl" and joined["world_size"] == 1 and joined["rank"] == 0
        assert world.is_distributed and world.world_size == 1 and world.device == torch.device("cuda", 0)
    finally:
        distributed.teardown()


def test_fast_attention_computing_in_fp32_is_refused_up_front():
    spec = load_spec(FLAGSHIP, ["ops.backend=fast", "parallel.fsdp.param_dtype=float32"])
    with pytest.raises(UserError, match="bf16/fp16 only.*param_dtype: bfloat16"):
        check_ops_can_train(spec, "cuda")


def test_auto_backend_per_op(monkeypatch):
    assert set(chosen_backends("auto", device_type="cpu").values()) == {"hf"}  # CPU runs stay bitwise transformers'
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "fla" else object())
    on_gpu = chosen_backends("auto", device_type="cuda", compute_dtype="bfloat16")
    assert on_gpu == {"attention": "fast", "delta_rule": "hf", "conv1d": "hf", "rms_norm": "fast",
                      "gated_rms_norm": "fast", "cross_entropy": "fast"}
    assert chosen_backends("auto", device_type="cuda", compute_dtype="float32")["attention"] == "hf"
    assert chosen_backends("auto", {"cross_entropy": "hf"}, device_type="cuda")["cross_entropy"] == "hf"


def test_auto_choice_is_written_into_the_resolved_spec():
    spec = load_spec(FLAGSHIP)
    decided, summary = decide_auto_ops(spec, "cpu", sharded=False)
    assert summary.startswith("ops (auto, cpu): fast -; hf attention")
    saved = yaml.safe_load(decided.to_yaml())
    assert saved["ops"] == {"backend": "auto", "overrides": {name: "hf" for name in saved["ops"]["overrides"]}}
    # The resolved YAML is a valid spec that selects the same ops on any machine.
    reloaded = load_spec_from_dict(saved)
    assert chosen_backends(reloaded.ops["backend"], reloaded.ops["overrides"], device_type="cuda") == decided.ops["overrides"]


def test_the_gpu_path_computes_in_param_dtype_with_fp32_masters(tmp_path, monkeypatch, single_rank_group):
    # The world-of-one FSDP path that every CUDA run takes, here over gloo: attention sees bf16
    # q/k/v (FSDP2's mixed precision, no autocast) while the master weights stay fp32.
    import blocks.ops.hf_attention as hf_attention

    seen = set()
    real = hf_attention.attention

    def recording(q, k, v, **kwargs):
        seen.add(q.dtype)
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(hf_attention, "attention", recording)
    spec = load_spec(TINY, ["parallel.fsdp.param_dtype=bfloat16", "train.steps=1", "train.export_hf=false",
                            "train.checkpoint.every=0"])
    world = distributed.World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"),
                              mesh=distributed.device_mesh(torch.device("cpu")))
    result = train(spec, output_dir=tmp_path / "run", stream=io.StringIO(), world=world)
    assert seen == {torch.bfloat16}
    assert result.last_checkpoint is None and not (tmp_path / "run" / "checkpoints").exists()  # every: 0


def test_the_root_unit_stays_unsharded_between_forward_and_backward(single_rank_group):
    spec = load_spec(TINY, ["parallel.fsdp.param_dtype=bfloat16"])
    model = build_model(spec, seed=0)
    parallelize(model, spec)
    row, _ = synthetic_row(spec.model, 256, layout="one-document", images=ImageSpec(1, 64, 64))
    out = model(**{k: v for k, v in row.items()})
    group = model._get_fsdp_state()._fsdp_param_group
    merger_fc2 = next(p for p in group.fsdp_params if p._module_info.module is model.model.visual.merger.linear_fc2
                      and p._module_info.param_name == "weight")
    # Resharded, this storage is freed (size 0) here, and CUDA's backward then fails on it.
    assert group.post_forward_mesh_info is None
    assert merger_fc2._unsharded_param.untyped_storage().size() > 0
    out.loss.backward()


@pytest.mark.slow
def test_the_hf_backend_compiles_packed_rows_fullgraph(tmp_path):
    # Vision blocks and full-attention layers compiled fullgraph on the hf backend, over rows of
    # several documents and images of several sizes: compiled, the losses are eager's to fp32 rounding
    # (the compiled attention reduces over the whole row with exact zeros for other documents).
    common = ["train.steps=3", "train.log_every=1", "train.export_hf=false", "train.checkpoint.every=0", "ops.backend=hf"]
    compiled = ["parallel.compile.vision.enabled=true", "parallel.compile.full.enabled=true"]
    eager = train(load_spec(TINY, common), output_dir=tmp_path / "eager", stream=io.StringIO())
    got = train(load_spec(TINY, common + compiled), output_dir=tmp_path / "compiled", stream=io.StringIO())
    for step, loss in eager.losses.items():
        assert abs(got.losses[step] - loss) <= 1e-4 * abs(loss), (step, got.losses[step], loss)


def test_synthetic_rows_are_shaped_like_packed_data():
    spec = load_spec(FLAGSHIP)
    image_token = spec.model["tokens"]["image"]
    packed, patches = synthetic_row(spec.model, 8192, layout="packed", images=ImageSpec(4, 448, 448))
    assert packed["input_ids"].shape == (1, 8192) and packed["packing"].cu_seqlens[-1] == 8192
    assert packed["packing"].num_documents >= 8
    assert patches == 4 * 28 * 28 == packed["pixel_values"].shape[0]
    assert int((packed["input_ids"] == image_token).sum()) == 4 * 28 * 28 // 4
    assert not ((packed["input_ids"] == image_token) & (packed["shift_labels"] != -100)).any()
    one, _ = synthetic_row(spec.model, 8192, layout="one-document")
    assert one["packing"].num_documents == 1 and one["pixel_values"] is None
