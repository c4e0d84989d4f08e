"""A broken HF folder is refused with an error naming the file / key, before the model is touched."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import Qwen3_5ForConditionalGeneration

from assembler.hf.checkpoint import CheckpointError, load_hf_checkpoint
from assembler.hf.checkpoint.reading import INDEX_FILE, open_checkpoint_folder
from tests.hf_checkpoint_fixtures import make_source_folder, tiny_hf_config


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_source_folder(tmp_path_factory.mktemp("hf") / "source")


@pytest.fixture
def source(pristine, tmp_path) -> Path:
    """A private copy each test may break."""
    return Path(shutil.copytree(pristine, tmp_path / "source"))


def _meta_model():
    with torch.device("meta"):
        return Qwen3_5ForConditionalGeneration(tiny_hf_config())


def _weight_map(folder: Path) -> dict[str, str]:
    return json.loads((folder / INDEX_FILE).read_text())["weight_map"]


def _untouched(model) -> bool:
    return all(p.device.type == "meta" for p in model.parameters())


def test_index_and_headers_cover_every_tensor(source):
    folder = open_checkpoint_folder(source)
    assert set(folder.tensors) == set(_weight_map(source))
    assert len(folder.shard_files) >= 3
    a_log = folder.tensors["model.language_model.layers.0.linear_attn.A_log"]
    assert (a_log.dtype, a_log.shape) == ("F32", (4,))


def test_truncated_shard_names_the_file(source):
    victim = source / sorted(set(_weight_map(source).values()))[1]
    os.truncate(victim, victim.stat().st_size - 10)
    model = _meta_model()
    with pytest.raises(CheckpointError, match=rf"{victim.name}: truncated.*re-download"):
        load_hf_checkpoint(model, source)
    assert _untouched(model)


def test_header_cut_short_names_the_file(source):
    victim = source / sorted(set(_weight_map(source).values()))[0]
    os.truncate(victim, 20)
    with pytest.raises(CheckpointError, match=rf"{victim.name}: truncated or not a safetensors file"):
        load_hf_checkpoint(_meta_model(), source)


def test_missing_shard_names_the_file(source):
    victim = sorted(set(_weight_map(source).values()))[2]
    (source / victim).unlink()
    with pytest.raises(CheckpointError, match=rf"names shard\(s\) that are not in .*{victim}"):
        load_hf_checkpoint(_meta_model(), source)


def test_unexpected_key_is_listed_with_its_file(source):
    save_file({"model.language_model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)}, str(source / "extra.safetensors"))
    index = json.loads((source / INDEX_FILE).read_text())
    index["weight_map"]["model.language_model.layers.9.mlp.up_proj.weight"] = "extra.safetensors"
    (source / INDEX_FILE).write_text(json.dumps(index))
    model = _meta_model()
    with pytest.raises(CheckpointError, match=r"not in the model \(1\): model\.language_model\.layers\.9\.mlp\.up_proj\.weight \(extra\.safetensors\)"):
        load_hf_checkpoint(model, source)
    assert _untouched(model)


def test_missing_key_is_listed(source):
    name = "model.visual.blocks.1.attn.qkv.bias"
    file = _weight_map(source)[name]
    from safetensors.torch import load_file

    tensors = load_file(str(source / file))
    del tensors[name]
    save_file(tensors, str(source / file), metadata={"format": "pt"})
    index = json.loads((source / INDEX_FILE).read_text())
    del index["weight_map"][name]
    (source / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"missing from the checkpoint \(1\): {name}"):
        load_hf_checkpoint(_meta_model(), source)


def test_index_naming_a_tensor_its_shard_lacks(source):
    index = json.loads((source / INDEX_FILE).read_text())
    name, file = next(iter(index["weight_map"].items()))
    other = next(f for f in index["weight_map"].values() if f != file)
    index["weight_map"][name] = other
    (source / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"maps 1 tensor\(s\) to {other}, which does not contain them: {name}"):
        open_checkpoint_folder(source)


def test_wrong_shape_names_key_and_file(source):
    name = "model.language_model.norm.weight"
    file = _weight_map(source)[name]
    from safetensors.torch import load_file

    tensors = load_file(str(source / file))
    tensors[name] = torch.zeros(65, dtype=tensors[name].dtype)
    save_file(tensors, str(source / file), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"{file}: tensor '{name}' has shape \[65\], the model expects \[64\]"):
        load_hf_checkpoint(_meta_model(), source)


def test_pickled_weights_are_refused_not_read(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even opened")
    with pytest.raises(CheckpointError, match=r"only pickled weights \(pytorch_model\.bin\); only safetensors are read"):
        open_checkpoint_folder(tmp_path)


def test_missing_config_names_the_file(source):
    (source / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        open_checkpoint_folder(source)


def test_single_file_folder_loads(tmp_path):
    """The other layout: one model.safetensors and no index."""
    reference = Qwen3_5ForConditionalGeneration(tiny_hf_config())
    reference.save_pretrained(tmp_path)  # small enough for one file
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / INDEX_FILE).exists()
    model = _meta_model()
    load_hf_checkpoint(model, tmp_path)
    for name, parameter in reference.named_parameters():
        assert torch.equal(model.get_parameter(name), parameter), name
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight


def test_wrapped_blocks_keep_checkpoint_names(source):
    """Activation checkpointing and torch.compile wrap blocks; the checkpoint names stay HF's."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    from assembler.hf.checkpoint.model_tensors import model_tensors

    model = _meta_model()
    layers = model.model.language_model.layers
    layers[0] = checkpoint_wrapper(layers[0])
    layers[1] = torch.compile(layers[1])
    assert any("_checkpoint_wrapped_module" in n for n, _ in model.named_parameters())
    assert set(model_tensors(model)) == set(model_tensors(_meta_model()))
    load_hf_checkpoint(model, source)
    assert not _untouched(model)
