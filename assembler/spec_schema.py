"""The spec's JSON Schema: the single source of truth for the spec's keys, enums and defaults.

This module reads the schema file and walks it (follow `$ref`, find the sub-schema of a key,
fill in defaults); validating against it is `spec_validation`'s job.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).parent / "schema" / "spec.schema.json"


@functools.lru_cache(maxsize=1)
def cached_schema() -> dict:
    """The spec schema, shared: read it, never modify it (`load_schema` gives a private copy)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def load_schema() -> dict:
    """The spec schema (a fresh copy: callers may modify it)."""
    return copy.deepcopy(cached_schema())


def resolve_ref(node: dict) -> dict:
    """`node` with a local `$ref` (`#/$defs/x`) replaced by its target; sibling keys win."""
    if "$ref" not in node:
        return node
    target: Any = cached_schema()
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    merged = {**resolve_ref(target), **node}
    del merged["$ref"]
    return merged


def branch_schema(node: dict, instance: Any) -> dict:
    """`node` with the settings of the block `instance` names: a block section's schema lists only
    `block` and picks the block's own settings by `allOf: [{if: {block: NAME}, then: ...}]`."""
    node = resolve_ref(node)
    if not isinstance(instance, dict) or "allOf" not in node:
        return node
    properties = dict(node.get("properties", {}))
    for clause in node["allOf"]:
        wanted = clause.get("if", {}).get("properties", {}).get("block", {}).get("const")
        if wanted is not None and instance.get("block") == wanted:
            properties.update(resolve_ref(clause["then"]).get("properties", {}))
    return {**node, "properties": properties}


def child_schema(node: dict, key: str | int, instance: Any = None) -> dict | None:
    """The sub-schema of mapping key / list index `key` under `node` (whose value is `instance`,
    when known: it picks a block section's settings), or None if `node` has no such child."""
    node = branch_schema(node, instance)
    if isinstance(key, int):
        items = node.get("items")
        return resolve_ref(items) if isinstance(items, dict) else None
    properties = node.get("properties", {})
    if key in properties:
        return resolve_ref(properties[key])
    extra = node.get("additionalProperties", True)
    return resolve_ref(extra) if isinstance(extra, dict) else None


def allowed_keys(node: dict, instance: Any = None) -> list[str]:
    """The keys an object schema accepts (empty for non-objects; a map of named entries lists none)."""
    return list(branch_schema(node, instance).get("properties", {}))


def is_list_schema(node: dict) -> bool:
    return resolve_ref(node).get("type") == "array"


def fill_defaults(instance: Any, node: dict | None = None) -> Any:
    """A copy of `instance` with every missing key that has a schema `default` filled in, recursively.

    Defaults that are objects (`{}`) are filled in turn, so `train: {}` grows every train default;
    entries of named maps (`layer_types`, `compile`) and the settings of the block a section names
    are filled too. Values of the wrong type are left as they are for validation to report.
    """
    node = branch_schema(cached_schema() if node is None else node, instance)
    if isinstance(instance, dict):
        filled = {}
        properties = node.get("properties", {})
        extra = node.get("additionalProperties")
        for key, value in instance.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            filled[key] = fill_defaults(value, sub) if sub is not None else copy.deepcopy(value)
        for key, sub in properties.items():
            sub = resolve_ref(sub)
            if key not in filled and "default" in sub:
                filled[key] = fill_defaults(copy.deepcopy(sub["default"]), sub)
        return filled
    if isinstance(instance, list) and isinstance(node.get("items"), dict):
        return [fill_defaults(item, node["items"]) for item in instance]
    return copy.deepcopy(instance)
