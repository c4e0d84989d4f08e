"""Typed spec sections: every setting a caller leaves out takes the schema's default (read here
from the checked-in schema file, not from the code under test), so no caller restates a default."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from assembler.spec.schema import SCHEMA_PATH
from assembler.spec.sections import (
    CheckpointingSettings,
    CompileSettings,
    DataSettings,
    FsdpSettings,
    OptimizerSettings,
    ScheduleSettings,
    typed_section,
)

SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _default(*path: str):
    node = SCHEMA
    for key in path:
        node = node["properties"][key]
    return node["default"]


def test_a_partial_section_takes_the_schema_defaults():
    optimizer = OptimizerSettings.of({"lr": 1e-3})
    assert optimizer.lr == 1e-3
    assert optimizer.eps == _default("train", "optimizer", "eps")
    assert optimizer.betas == tuple(_default("train", "optimizer", "betas"))
    assert ScheduleSettings.of({}).warmup_steps == _default("train", "schedule", "warmup_steps")
    assert FsdpSettings.of({}).fp32_params == _default("parallel", "fsdp", "fp32_params")
    assert CheckpointingSettings.of({}).mode == _default("parallel", "activation_checkpointing", "mode")


def test_nested_sections_are_typed_and_filled():
    data = DataSettings.of({"images": {"min_pixels": 1024}})
    # The loader once fell back to 65,536 here while the schema said otherwise.
    assert data.images.max_pixels == _default("data", "images", "max_pixels")
    assert data.images.min_pixels == 1024
    assert data.packing.length is None  # null: train.tokens_per_step
    assert data.packing.overlong == _default("data", "packing", "overlong")


def test_a_compile_entry_of_any_block_type_is_filled():
    policy = CompileSettings.of({"enabled": True}, "my_layer_type")
    assert policy.enabled and policy.fullgraph == SCHEMA["$defs"]["compile_policy"]["properties"]["fullgraph"]["default"]
    assert policy.mode is None


def test_a_setting_without_a_default_is_named():
    @dataclass(frozen=True)
    class NeedsSources:
        sources: list
        missing_setting: int

    with pytest.raises(ValueError, match=r"data\.missing_setting: missing"):
        typed_section(NeedsSources, {}, "data")


def test_a_loaded_spec_reads_every_section_typed():
    from pathlib import Path

    from assembler import load_spec
    from assembler.spec.sections import AdapterSettings, TokenSettings

    specs = Path(__file__).resolve().parents[1] / "specs"
    spec = load_spec(specs / "qwen3_5_tiny.yaml", ["train.dtype=bfloat16", "train.adapters={rank: 4}"])
    settings = spec.settings
    assert settings.train.dtype == "bfloat16"  # the override, typed
    assert isinstance(settings.train.adapters, AdapterSettings) and settings.train.adapters.rank == 4
    assert settings.train.checkpoint.keep_last == _default("train", "checkpoint", "keep_last")
    assert settings.parallel.fsdp.reduce_dtype == _default("parallel", "fsdp", "reduce_dtype")
    assert isinstance(settings.model.tokens, TokenSettings)
    assert settings.model.tokens.eos == _default("model", "tokens", "eos")
    assert settings.model.text.layers == tuple(spec.to_dict()["model"]["text"]["layers"])
    assert settings.model.mtp is None and load_spec(specs / "qwen3_5_tiny.yaml").settings.train.adapters is None
    assert spec.settings is settings  # built once per spec


def test_replaced_writes_a_setting_into_a_copy():
    from pathlib import Path

    from assembler import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml")
    before = spec.to_dict()
    section = {"mode": "full", "placement": "inside_compile"}
    changed = spec.replaced("parallel.activation_checkpointing", section)
    assert changed.settings.parallel.activation_checkpointing.mode == "full"
    assert changed.to_dict()["parallel"]["activation_checkpointing"] == section
    assert spec.to_dict() == before and spec.settings.parallel.activation_checkpointing.mode == before["parallel"]["activation_checkpointing"]["mode"]
    deeper = spec.replaced("model.text.layers", ["full"]).replaced("model.text.num_hidden_layers", 1)
    assert deeper.settings.model.text.layers == ("full",) and deeper.settings.model.text.num_hidden_layers == 1
    assert spec.settings.model.text.layers == tuple(before["model"]["text"]["layers"])


def test_no_code_outside_the_spec_package_indexes_a_spec_section():
    """`spec.train["dtype"]` and the like are read as `spec.settings.train.dtype` (typed, defaults
    filled once); the section dicts are the spec package's, and what a family builds from."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    indexing = re.compile(r"\bspec\.(model|ops|parallel|train|data)\s*(\[|\.get\()")
    files = [*(root / "assembler").rglob("*.py"), root / "cli.py", *(root / "benchmarks").glob("*.py")]
    readers = [path for path in files if not path.is_relative_to(root / "assembler" / "spec")]
    found = [f"{path.relative_to(root)}:{number}: {line.strip()}" for path in readers
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if indexing.search(line)]
    assert found == []
