"""Loading a spec: defaults, `extends`, `key=value` overrides, the resolved spec and its YAML."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from assembler import Spec, SpecError, load_spec
from assembler.spec.loading import apply_overrides, deep_merge, load_spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
FLAGSHIP = ROOT / "specs" / "qwen3_5_4b.yaml"


def test_flagship_is_complete_after_defaults():
    spec = load_spec(FLAGSHIP)
    assert spec.name == "qwen3_5_4b" and spec.source == FLAGSHIP
    # the 4B spec has no train/data sections: every field comes from the schema's defaults
    assert spec.train["optimizer"]["name"] == "adamw" and spec.train["schedule"]["name"] == "cosine"
    assert spec.train["checkpoint"] == {"every": 500, "keep_last": 2}
    assert spec.data["packing"]["overlong"] == "truncate" and spec.data["sources"] == []
    assert spec.ops == {"backend": "auto", "overrides": {}}
    assert spec.model["text"]["layer_types"]["full"]["mixer"]["qk_norm"] is True
    # every block type gets its compile policy, filled in (the file sets all three)
    assert set(spec.parallel["compile"]) == {"linear", "full", "vision"}
    # what the file says wins over the defaults; the fields it leaves out still get theirs
    assert spec.parallel["activation_checkpointing"] == {"mode": "auto", "placement": "inside_compile"}
    assert spec.parallel["fsdp"]["param_dtype"] == "bfloat16"


def test_tiny_spec_keeps_its_train_and_data():
    spec = load_spec(TINY)
    written = yaml.safe_load(TINY.read_text())["train"]  # the file's values, not the schema defaults
    assert spec.train["steps"] == written["steps"] and spec.train["optimizer"]["lr"] == written["optimizer"]["lr"]
    # the file's sources, each with the schema's default weight filled in, as every section gets its defaults
    assert spec.data["sources"] == [{"path": "data/tiny/captions.jsonl", "weight": 1}, {"path": "data/tiny/chats.jsonl", "weight": 1}]
    assert spec.resolve_path("data/tiny/chats.jsonl") == ROOT / "specs" / "data" / "tiny" / "chats.jsonl"
    assert spec.resolve_path("/abs/x.jsonl") == Path("/abs/x.jsonl")


def test_resolved_yaml_loads_back_to_the_same_spec(tmp_path):
    spec = load_spec(TINY, ["train.steps=7"])
    saved = tmp_path / "run" / "resolved_spec.yaml"
    saved.parent.mkdir()
    saved.write_text(spec.to_yaml())
    again = load_spec(saved)
    assert "layers: [linear, linear, linear, full]" in spec.to_yaml()
    # data paths were relative to specs/: the saved copy (elsewhere) anchors them to the same files
    assert [again.resolve_path(s["path"]) for s in again.data["sources"]] == [
        spec.resolve_path(s["path"]) for s in spec.data["sources"]]
    assert again.resolve_path(again.data["sources"][0]["path"]).is_file()
    for section in ("model", "ops", "parallel", "train"):
        assert getattr(again, section) == getattr(spec, section)
    assert {k: v for k, v in again.data.items() if k != "sources"} == {k: v for k, v in spec.data.items() if k != "sources"}


def test_spec_is_frozen_and_to_dict_is_a_copy():
    spec = load_spec(TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    copy = spec.to_dict()
    copy["model"]["text"]["layers"][0] = "full"
    assert spec.model["text"]["layers"][0] == "linear"
    assert set(copy) == {"name", "model", "ops", "parallel", "train", "data"}


def test_overrides_dotted_indexed_and_yaml_typed():
    spec = load_spec(TINY, [
        "train.steps=10",
        "model.text.layers.3=linear",
        "model.text.layers[2]=full",
        "train.optimizer.betas=[0.8, 0.9]",
        "ops.overrides.attention=fast",
        "train.output_dir=null",
        "name=renamed",
    ])
    assert spec.train["steps"] == 10
    assert spec.model["text"]["layers"] == ["linear", "linear", "full", "linear"]
    assert spec.train["optimizer"]["betas"] == [0.8, 0.9]
    assert spec.ops["overrides"] == {"attention": "fast"}
    assert spec.name == "renamed"


def test_override_creates_a_section_the_file_does_not_have():
    spec = load_spec(FLAGSHIP, ["train.steps=3", "data.packing.length=128"])
    assert spec.train["steps"] == 3 and spec.train["log_every"] == 10  # the rest still defaulted
    assert spec.data["packing"] == {"length": 128, "overlong": "truncate", "window": 4096}


def test_overrides_apply_before_validation():
    with pytest.raises(SpecError) as caught:
        load_spec(TINY, ["model.text.num_hidden_layers=5"])
    assert "num_hidden_layers is 5" in str(caught.value)
    # and an override can repair what the file gets wrong
    assert load_spec(TINY, ["model.text.num_hidden_layers=5", "model.text.layers=[linear, linear, linear, full, full]"])


def test_apply_overrides_leaves_its_input_alone():
    original = {"name": "x", "train": {"steps": 1}}
    assert apply_overrides(original, ["train.steps=2"])["train"]["steps"] == 2
    assert original["train"]["steps"] == 1


def test_deep_merge_merges_maps_and_replaces_lists():
    base = {"a": {"b": 1, "c": [1, 2, 3]}, "d": 1}
    assert deep_merge(base, {"a": {"c": [9]}, "e": 2}) == {"a": {"b": 1, "c": [9]}, "d": 1, "e": 2}


def test_extends_is_relative_to_the_extending_file(tmp_path):
    child_dir = tmp_path / "variants"
    child_dir.mkdir()
    child = child_dir / "wider.yaml"
    relative_parent = os.path.relpath(TINY, child_dir)
    child.write_text(
        f"extends: {relative_parent}\n"
        "name: tiny_wider\n"
        "model:\n  text:\n    layers: [full, full, full, full]\n    layer_types: {full: {mlp: {intermediate_size: 256}}}\n"
        "train: {steps: 5}\n"
    )
    spec = load_spec(child)
    assert spec.name == "tiny_wider"
    assert spec.model["text"]["layers"] == ["full"] * 4  # list replaced
    assert spec.model["text"]["layer_types"]["full"]["mlp"] == {"block": "swiglu", "intermediate_size": 256}  # map merged
    assert spec.train["steps"] == 5 and spec.train["seed"] == 0
    parent_length = yaml.safe_load(TINY.read_text())["data"]["packing"]["length"]
    assert spec.data["packing"]["length"] == parent_length  # inherited from the parent
    assert "extends" not in spec.to_dict()


def test_extends_chain_and_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "a.yaml")
    assert "extends cycle" in str(caught.value) and "a.yaml" in str(caught.value)


def test_extends_missing_parent_names_the_extending_file(tmp_path):
    (tmp_path / "child.yaml").write_text("extends: nowhere.yaml\nname: c\n")
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "child.yaml")
    message = str(caught.value)
    assert "child.yaml: extends: 'nowhere.yaml': no such spec file" in message


def test_load_spec_from_dict_validates_too():
    data = yaml.safe_load(TINY.read_text())
    spec = load_spec_from_dict(data)
    assert isinstance(spec, Spec) and spec.source is None
    data["model"]["text"]["layers"] = ["linear"]
    with pytest.raises(SpecError, match="has 1 entries but num_hidden_layers is 4"):
        load_spec_from_dict(data)


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec(tmp_path / "empty.yaml")


def test_selective_checkpointing_rules():
    spec = load_spec(TINY, ["parallel.activation_checkpointing={mode: selective, layers: [full, 0, vision]}"])
    assert spec.parallel["activation_checkpointing"]["layers"] == ["full", 0, "vision"]
    with pytest.raises(SpecError, match="mode selective needs the layers"):
        load_spec(TINY, ["parallel.activation_checkpointing.mode=selective"])
    with pytest.raises(SpecError, match="layer index 4 is out of range"):
        load_spec(TINY, ["parallel.activation_checkpointing={mode: selective, layers: [4]}"])
    with pytest.raises(SpecError, match="only used with mode: selective"):
        load_spec(TINY, ["parallel.activation_checkpointing={mode: full, layers: [full]}"])


def test_inherited_paths_stay_relative_to_the_file_that_wrote_them(tmp_path, monkeypatch):
    """A spec in another folder extending the tiny spec finds its data (issue 25: the inherited
    `data/tiny/captions.jsonl` was resolved against the extending file's folder)."""
    child = tmp_path / "elsewhere" / "mine.yaml"
    child.parent.mkdir()
    child.write_text(f"extends: {os.path.relpath(TINY, child.parent)}\nname: mine\n")
    spec = load_spec(child)
    resolved = [spec.resolve_path(source["path"]).resolve() for source in spec.data["sources"]]
    assert resolved == [TINY.parent / "data" / "tiny" / "captions.jsonl", TINY.parent / "data" / "tiny" / "chats.jsonl"]
    assert all(path.is_file() for path in resolved)
    # the extending file's own paths stay its own
    child.write_text(child.read_text() + "data: {sources: [{path: mine.jsonl}]}\n")
    assert load_spec(child).resolve_path(load_spec(child).data["sources"][0]["path"]) == child.parent / "mine.jsonl"


def test_a_path_given_as_an_override_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(TINY, ["train.init_from=runs/qwen3_5_tiny/hf", "data.sources=[{path: data.jsonl}]"])
    assert spec.resolve_path(spec.train["init_from"]) == tmp_path / "runs" / "qwen3_5_tiny" / "hf"
    assert spec.resolve_path(spec.data["sources"][0]["path"]) == tmp_path / "data.jsonl"
    # the spec file's own relative paths are untouched by an unrelated override
    assert load_spec(TINY, ["train.steps=3"]).data["sources"][0]["path"] == "data/tiny/captions.jsonl"
