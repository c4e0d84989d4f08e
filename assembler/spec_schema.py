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


def child_schema(node: dict, key: str | int) -> dict | None:
    """The sub-schema of mapping key / list index `key` under `node`, or None if `node` has no such child."""
    node = resolve_ref(node)
    if isinstance(key, int):
        items = node.get("items")
        return resolve_ref(items) if isinstance(items, dict) else None
    properties = node.get("properties", {})
    if key in properties:
        return resolve_ref(properties[key])
    extra = node.get("additionalProperties", True)
    return resolve_ref(extra) if isinstance(extra, dict) else None


def allowed_keys(node: dict) -> list[str]:
    """The keys an object schema accepts (empty for non-objects)."""
    return list(resolve_ref(node).get("properties", {}))


def is_list_schema(node: dict) -> bool:
    return resolve_ref(node).get("type") == "array"


def fill_defaults(instance: Any, node: dict | None = None) -> Any:
    """A copy of `instance` with every missing key that has a schema `default` filled in, recursively.

    Defaults that are objects (`{}`) are filled in turn, so `train: {}` grows every train default.
    Values of the wrong type are left as they are for validation to report.
    """
    node = resolve_ref(cached_schema() if node is None else node)
    if isinstance(instance, dict):
        filled = {}
        properties = node.get("properties", {})
        for key, value in instance.items():
            sub = properties.get(key)
            filled[key] = fill_defaults(value, sub) if sub is not None else copy.deepcopy(value)
        for key, sub in properties.items():
            sub = resolve_ref(sub)
            if key not in filled and "default" in sub:
                filled[key] = fill_defaults(copy.deepcopy(sub["default"]), sub)
        return filled
    if isinstance(instance, list) and isinstance(node.get("items"), dict):
        return [fill_defaults(item, node["items"]) for item in instance]
    return copy.deepcopy(instance)
