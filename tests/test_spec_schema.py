"""The schema itself: well-formed, strict everywhere, documented, and in agreement with the code it describes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from jsonschema import Draft202012Validator

from assembler import load_spec
from assembler.spec.schema import fill_defaults, load_schema, resolve_ref
from assembler.spec.validation import block_fields, schema_problems

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


def _is_block_section(node: dict) -> bool:
    """A section naming a block (`block: NAME`) whose settings each branch `allOf: [{if, then}]` adds."""
    branches = node.get("allOf") or []
    return set(node.get("properties", {})) == {"block"} and bool(branches) and all(
        "if" in b and "$ref" in b.get("then", {}) for b in branches)


def test_every_object_rejects_unknown_keys():
    """An object forbids unknown keys, or is a map of named entries whose values have a strict
    schema (`layer_types`, `compile`), or is a block section whose settings come from the strict
    schema of the block it names (then a typo is reported there)."""
    schema = load_schema()
    objects = [(p, n) for p, n in walk(schema) if (n.get("type") == "object" or "properties" in n)
               and not p.endswith("/if")]  # an `if` is a test on a value, not a section of it
    assert len(objects) > 20
    loose = [p for p, n in objects if n.get("additionalProperties") is not False
             and not isinstance(n.get("additionalProperties"), dict) and not _is_block_section(n)]
    assert not loose, f"objects without additionalProperties: false: {loose}"
    sections = [n for _, n in walk(schema) if _is_block_section(n)]
    assert len(sections) >= 2
    for section in sections:
        for branch in section["allOf"]:
            target = resolve_ref(branch["then"])
            assert target["additionalProperties"] is False and "block" in target["properties"]


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
    assert filled["parallel"]["compile"] == {}  # filled per block type by load_spec (test_spec_loading)


def _enum_at(path: tuple[str, ...]) -> list[str]:
    node = load_schema()
    for key in path:
        node = resolve_ref(node["properties"][key])
    return node["enum"]


def _schema_block_names() -> dict[str, set[str]]:
    """{registry kind: block names the schema accepts}: the block sections' discriminators."""
    defs = load_schema()["$defs"]
    names = {kind: set(defs[kind]["properties"]["block"]["enum"]) for kind in ("mixer", "mlp", "vision", "merger")}
    for kind, branch in names.items():  # each named block has its own settings schema
        assert {b["if"]["properties"]["block"]["const"] for b in defs[kind]["allOf"]} == branch
    # and the spec's sections name these discriminators
    assert _enum_at(("model", "vision", "block")) == sorted(names["vision"])
    return names


def test_schema_block_enums_and_registry_agree():
    """Every registered block is nameable in the schema, and every name in the schema is registered.

    Rule for kinds the spec never names (no `block:` field has that kind, e.g. `norm`, which the
    blocks pick themselves): they may be registered without appearing in the schema. Every kind
    the spec does name must match the registry exactly.
    """
    from blocks.registry import registered_blocks

    registered = registered_blocks()
    in_schema = _schema_block_names()
    for kind, names in in_schema.items():
        assert set(registered.get(kind, [])) == names, f"kind {kind!r}: registry {registered.get(kind)} vs schema {sorted(names)}"
    unnamed_kinds = set(registered) - set(in_schema)
    assert unnamed_kinds <= {"norm"}, f"registered kinds no spec field names: {unnamed_kinds}; add a `block:` field or list them here"


@pytest.mark.parametrize("spec_file", SPEC_FILES, ids=lambda p: p.name)
def test_block_fields_name_every_block_of_a_spec(spec_file):
    """block_fields (what the registry check walks) lists exactly the `block:` keys of a spec."""
    found = set()

    def visit(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            if "block" in node:
                found.add(path + ("block",))
            for key, value in node.items():
                visit(value, path + (key,))

    spec = load_spec(spec_file).to_dict()
    visit({"model": spec["model"]}, ())
    assert found == set(block_fields(spec))


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
