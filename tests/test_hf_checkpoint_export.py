"""Export: `mtp.*` tensors carried through verbatim, config mismatches refused by field, and no
partial output ever left under the export's name."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from assembler.model.build import build_model
from assembler.hf.checkpoint import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from assembler.hf.checkpoint import writing
from assembler.hf.checkpoint.reading import open_checkpoint_folder
from assembler.hf.config import spec_from_hf_config
from tests.hf_checkpoint_fixtures import add_mtp_tensors, make_source_folder


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_source_folder(tmp_path_factory.mktemp("export") / "source")


@pytest.fixture
def source(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "source"))


def _spec(folder: Path, **text_changes):
    config = json.loads((folder / "config.json").read_text())
    config["text_config"].update(text_changes)
    return spec_from_hf_config(config)


def _loaded(folder: Path, spec):
    model = build_model(spec, device="meta")
    load_hf_checkpoint(model, folder, spec)
    return model


def _no_output(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not list(parent.glob(f".{name}.*"))


def test_mtp_tensors_come_out_unchanged(source, tmp_path, caplog):
    mtp = add_mtp_tensors(source)
    spec = _spec(source)
    with caplog.at_level(logging.INFO, logger="assembler.hf.checkpoint"):
        loaded = load_hf_checkpoint(model := build_model(spec, device="meta"), source, spec)
        out = save_hf_checkpoint(model, tmp_path / "out", spec, source_dir=source, shard_size="40KB")
    assert sorted(loaded.extra_tensor_names) == sorted(mtp)
    carried = [r for r in caplog.records if "mtp.*" in r.getMessage()]
    assert len(carried) == 2 and "4 mtp.* tensor(s)" in carried[0].getMessage()  # one line at load, one at export
    exported = open_checkpoint_folder(out)
    for name, tensor in mtp.items():
        with safe_open(str(out / exported.tensors[name].file), framework="pt") as shard:
            got = shard.get_tensor(name)
        assert got.dtype == tensor.dtype and torch.equal(got, tensor), name
    # the config keeps the field that tells vLLM / SGLang the head is there
    assert json.loads((out / "config.json").read_text())["text_config"]["mtp_num_hidden_layers"] == 1


def test_mtp_tensors_survive_a_second_export(source, tmp_path):
    mtp = add_mtp_tensors(source)
    spec = _spec(source)
    first = save_hf_checkpoint(_loaded(source, spec), tmp_path / "first", spec, source_dir=source)
    second = save_hf_checkpoint(_loaded(first, spec), tmp_path / "second", spec, source_dir=first)
    folder = open_checkpoint_folder(second)
    assert {n for n in folder.tensors if n.startswith("mtp.")} == set(mtp)


def test_config_disagreeing_with_spec_names_the_field(source):
    spec = _spec(source, num_key_value_heads=1)
    model = build_model(spec, device="meta")
    with pytest.raises(CheckpointError, match=r"config\.json describes a different model.*\n.*num_key_value_heads: spec has 1, the checkpoint has 2"):
        load_hf_checkpoint(model, source, spec)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_layer_type_disagreement_names_the_layer(source):
    layer_types = ["full_attention", "linear_attention", "linear_attention", "full_attention"]
    spec = _spec(source, layer_types=layer_types)
    with pytest.raises(CheckpointError, match=r"model\.text\.layers\[0\]: spec has 'full', the checkpoint has 'linear'"):
        load_hf_checkpoint(build_model(spec, device="meta"), source, spec)


def test_existing_export_is_refused_and_kept(source, tmp_path):
    spec = _spec(source)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"out: already exists and is not empty.*--overwrite"):
        save_hf_checkpoint(_loaded(source, spec), tmp_path / "out", spec)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_overwrite_replaces_an_earlier_export_whole(source, tmp_path):
    spec = _spec(source)
    model = _loaded(source, spec)
    save_hf_checkpoint(model, tmp_path / "out", spec, source_dir=source, shard_size="40KB")
    save_hf_checkpoint(model, tmp_path / "out", spec, shard_size="1GB", overwrite=True)
    side_files = [p.name for p in source.iterdir() if writing.SOURCE_FILE_PATTERN.match(p.name)]  # the model remembers its source
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([
        ".assemble-export", "config.json", "model-00001-of-00001.safetensors", "model.safetensors.index.json", *side_files
    ])  # none of the first export's 40KB shards is left
    assert not list(tmp_path.glob(".out.*"))  # neither the partial folder nor the old export is left


def test_crash_mid_export_leaves_nothing(source, tmp_path, monkeypatch):
    spec = _spec(source)
    model = _loaded(source, spec)
    real_save, calls = writing.save_file, []

    def failing_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(writing, "save_file", failing_save)
    with pytest.raises(CheckpointError, match="out: the disk is full .* nothing was written there"):  # exit 2
        save_hf_checkpoint(model, tmp_path / "out", spec, source_dir=source, shard_size="40KB")
    assert len(calls) == 3
    assert _no_output(tmp_path, "out")


def test_broken_source_fails_before_writing(source, tmp_path):
    """A truncated source shard (read for the carried files) stops the export before any output."""
    spec = _spec(source)
    model = _loaded(source, spec)
    victim = next(source.glob("model-*.safetensors"))
    victim.write_bytes(victim.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match=rf"{victim.name}: truncated"):
        save_hf_checkpoint(model, tmp_path / "out", spec, source_dir=source)
    assert _no_output(tmp_path, "out")


def test_untied_head_under_a_tying_spec_is_refused(source, tmp_path):
    """to_empty unties the head; exporting then would silently drop a separately trained head."""
    spec = _spec(source)
    model = _loaded(source, spec)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with pytest.raises(CheckpointError, match=r"lm_head\.weight is a separate tensor but spec .* ties it"):
        save_hf_checkpoint(model, tmp_path / "out", spec)
    assert _no_output(tmp_path, "out")


def test_model_of_another_spec_is_refused(source, tmp_path):
    spec = _spec(source)
    other = _spec(source, intermediate_size=96)
    with pytest.raises(CheckpointError, match=r"not the model spec .* describes .*other shapes.*mlp"):
        save_hf_checkpoint(_loaded(source, spec), tmp_path / "out", other)
    assert _no_output(tmp_path, "out")


def test_existing_empty_folder_is_filled(source, tmp_path):
    spec = _spec(source)
    (tmp_path / "out").mkdir()
    save_hf_checkpoint(_loaded(source, spec), tmp_path / "out", spec)
    assert (tmp_path / "out" / "config.json").is_file() and not list(tmp_path.glob(".out.*"))


def test_a_loaded_model_remembers_its_source_for_every_export(source, tmp_path):
    """Issue 12, defect 9: save_hf_checkpoint(model, out, spec) after load_hf_checkpoint(model, src)
    carries src's mtp.* tensors and tokenizer files without source_dir= being passed again."""
    from tests.hf_checkpoint_fixtures import SIDE_FILES

    mtp = add_mtp_tensors(source)
    spec = _spec(source)
    out = save_hf_checkpoint(_loaded(source, spec), tmp_path / "out", spec)
    folder = open_checkpoint_folder(out)
    assert {n for n in folder.tensors if n.startswith("mtp.")} == set(mtp)
    assert all((out / name).read_text() == text for name, text in SIDE_FILES.items())


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_exported_file_has_the_mode_the_umask_gives(source, tmp_path, umask):
    """The weight shards were -rw------- (safetensors writes through a private temporary file)
    while the other files followed the umask: a server running as another user could not read them."""
    import os
    import stat

    spec = _spec(source)
    model = _loaded(source, spec)
    previous = os.umask(umask)
    try:
        save_hf_checkpoint(model, tmp_path / "out", spec, source_dir=source, shard_size="40KB")
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "out").iterdir()}
    assert any(name.endswith(".safetensors") for name in modes)
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)
