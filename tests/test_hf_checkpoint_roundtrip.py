"""transformers save_pretrained (sharded) → assemble load → logits equal to transformers (hf backend)
→ assemble export → the same tensors, bit for bit → transformers loads the export to the same logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from assembler.model.build import build_model
from assembler.hf.checkpoint import load_hf_checkpoint, save_hf_checkpoint
from assembler.hf.checkpoint.reading import INDEX_FILE, open_checkpoint_folder
from assembler.hf.config import spec_from_hf_config
from tests.hf_checkpoint_fixtures import SIDE_FILES, make_source_folder, sample_inputs, transformers_logits

EXPORT_SHARD_SIZE = "40KB"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("roundtrip")
    return {"source": make_source_folder(root / "source"), "root": root}


@pytest.fixture(scope="module")
def spec(folders):
    return spec_from_hf_config(json.loads((folders["source"] / "config.json").read_text()))


@pytest.fixture(scope="module")
def loaded(folders, spec):
    """Our model, built on the meta device and loaded from the source folder (fp32, hf ops)."""
    model = build_model(spec, device="meta")
    load_hf_checkpoint(model, folders["source"], spec)
    return model.eval()


@pytest.fixture(scope="module")
def exported(folders, loaded, spec) -> Path:
    return save_hf_checkpoint(loaded, folders["root"] / "export", spec, source_dir=folders["source"], shard_size=EXPORT_SHARD_SIZE)


def _all_tensors(folder: Path) -> dict[str, torch.Tensor]:
    index = open_checkpoint_folder(folder)
    out = {}
    for file in index.shard_files:
        with safe_open(str(folder / file), framework="pt") as shard:
            out.update({name: shard.get_tensor(name) for name in shard.keys()})
    return out


def test_meta_model_is_fully_materialised(loaded):
    assert all(t.device.type == "cpu" for t in loaded.parameters())
    assert all(t.device.type == "cpu" for t in loaded.buffers())
    assert loaded.lm_head.weight is loaded.model.language_model.embed_tokens.weight


@torch.no_grad()
def test_loaded_logits_equal_transformers(folders, loaded):
    ours = loaded(**sample_inputs(), return_logits=True).logits
    assert torch.equal(ours, transformers_logits(folders["source"]))


def test_export_is_the_source_tensor_for_tensor(folders, exported):
    source, export = _all_tensors(folders["source"]), _all_tensors(exported)
    assert sorted(export) == sorted(source)
    for name, tensor in source.items():
        assert export[name].dtype == tensor.dtype, name
        assert torch.equal(export[name], tensor), name
    assert export["model.language_model.layers.0.linear_attn.A_log"].dtype == torch.float32
    assert export["model.language_model.layers.0.linear_attn.norm.weight"].dtype == torch.float32
    assert export["model.language_model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16
    assert "lm_head.weight" not in export


def test_export_is_sharded_with_a_consistent_index(exported):
    index = json.loads((exported / INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert sorted(p.name for p in exported.glob("*.safetensors")) == files
    entries = open_checkpoint_folder(exported).tensors.values()
    assert index["metadata"]["total_size"] == sum(entry.nbytes for entry in entries)
    for file in files:
        in_file = [entry.nbytes for entry in entries if entry.file == file]
        assert sum(in_file) <= 40_000 or len(in_file) == 1, file  # only a lone oversized tensor may exceed


def test_export_carries_config_and_side_files(folders, exported):
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "qwen3_5" and config["dtype"] == "bfloat16"
    for name, text in SIDE_FILES.items():
        assert (exported / name).read_text() == text
    assert not list(exported.parent.glob(".export.partial-*"))


@torch.no_grad()
def test_transformers_loads_the_export_to_identical_logits(folders, exported):
    assert torch.equal(transformers_logits(exported), transformers_logits(folders["source"]))


def test_export_of_the_export_is_identical(folders, exported, spec):
    """Export is a fixed point: load the export, export again → byte-identical shards."""
    model = build_model(spec, device="meta")
    load_hf_checkpoint(model, exported, spec)
    again = save_hf_checkpoint(model, folders["root"] / "again", spec, source_dir=exported, shard_size=EXPORT_SHARD_SIZE)
    for path in exported.glob("*.safetensors"):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name
