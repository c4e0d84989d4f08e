"""The schema itself: well-formed, strict everywhere, documented, and in agreement with the code it describes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from jsonschema import Draft202012Validator

from assembler import load_spec
from assembler.spec_schema import fill_defaults, load_schema, resolve_ref
from assembler.spec_validation import BLOCK_FIELDS, schema_problems

ROOT = Path(__file__).resolve().parents[1]
SPEC_FILES = sorted((ROOT / "specs").rglob("*.yaml"))


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every sub-schema (dict) with its location."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}/{index}")


def test_schema_is_valid_draft_2020_12():
    Draft202012Validator.check_schema(load_schema())


def test_every_object_rejects_unknown_keys():
    objects = [(p, n) for p, n in walk(load_schema()) if n.get("type") == "object" or "properties" in n]
    assert len(objects) > 20
    loose = [p for p, n in objects if n.get("additionalProperties") is not False]
    assert not loose, f"objects without additionalProperties: false: {loose}"


def test_every_property_is_described():
    undocumented = [f"{p}/{key}" for p, n in walk(load_schema()) if isinstance(n.get("properties"), dict)
                    for key, sub in n["properties"].items() if "description" not in sub]
    assert not undocumented


@pytest.mark.parametrize("spec_file", SPEC_FILES, ids=lambda p: p.name)
def test_every_shipped_spec_validates(spec_file):
    spec = load_spec(spec_file)
    assert spec.name
    assert spec_file.read_text().startswith("# yaml-language-server: $schema=")


def test_shipped_specs_exist():
    assert {"qwen3_5_4b.yaml", "qwen3_5_tiny.yaml"} <= {p.name for p in SPEC_FILES}


def test_defaults_are_themselves_valid():
    """A spec that only names its model gets defaults that pass the schema (no default contradicts it)."""
    spec = load_spec(ROOT / "specs" / "qwen3_5_4b.yaml").to_dict()
    minimal = {"name": "m", "model": spec["model"]}
    filled = fill_defaults(minimal)
    assert schema_problems(filled) == []
    assert set(filled) == {"name", "model", "ops", "parallel", "train", "data"}
    assert filled["parallel"]["compile"]["vision"] == {"enabled": False, "fullgraph": True}


def _enum_at(path: tuple[str, ...]) -> list[str]:
    node = load_schema()
    for key in path:
        node = resolve_ref(node["properties"][key])
    return node["enum"]


def test_schema_block_enums_and_registry_agree():
    """Every registered block is nameable in the schema, and every name in the schema is registered.

    Rule for kinds the spec never names (no `block:` field has that kind, e.g. `norm`, which the
    blocks pick themselves): they may be registered without appearing in the schema. Every kind
    the spec does name must match the registry exactly.
    """
    from blocks.registry import registered_blocks

    registered = registered_blocks()
    in_schema: dict[str, set[str]] = {}
    for path, kind in BLOCK_FIELDS.items():
        in_schema.setdefault(kind, set()).update(_enum_at(path))
    for kind, names in in_schema.items():
        assert set(registered.get(kind, [])) == names, f"kind {kind!r}: registry {registered.get(kind)} vs schema {sorted(names)}"
    unnamed_kinds = set(registered) - set(in_schema)
    assert unnamed_kinds <= {"norm"}, f"registered kinds no spec field names: {unnamed_kinds}; add a `block:` field or list them here"


def test_block_fields_cover_every_block_field_of_the_schema():
    found = set()
    for path, node in walk(load_schema()):
        if "block" in (node.get("properties") or {}):
            found.add(tuple(path.split("/properties/")[1:]) + ("block",))
    assert found == set(BLOCK_FIELDS)


def test_ops_section_matches_the_op_table():
    from blocks.ops import AUTO, BACKENDS, OP_NAMES

    ops = load_schema()["properties"]["ops"]
    assert ops["properties"]["backend"]["enum"] == [AUTO, *BACKENDS]
    assert ops["properties"]["backend"]["default"] == AUTO
    assert list(ops["properties"]["overrides"]["properties"]) == list(OP_NAMES)
    assert all(sub["enum"] == list(BACKENDS) for sub in ops["properties"]["overrides"]["properties"].values())


def test_train_and_data_enums_match_their_implementations():
    from assembler.data.packing import OVERLONG
    from assembler.train.optim import SCHEDULES

    assert set(_enum_at(("train", "schedule", "name"))) == set(SCHEDULES)
    assert set(_enum_at(("data", "packing", "overlong"))) == set(OVERLONG)
