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
