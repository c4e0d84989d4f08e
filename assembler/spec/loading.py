"""Load a spec: YAML file -> `extends` merged -> `key=value` overrides -> defaults -> validated `Spec`.

    spec = load_spec("specs/qwen3_5_tiny.yaml", ["train.steps=10", "model.text.layers.3=linear"])
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from assembler.common.paths import unusable_path_reason
from assembler.spec.errors import Problem, SpecError, did_you_mean, format_path
from assembler.spec.schema import cached_schema, allowed_keys, child_schema, fill_defaults, is_list_schema
from assembler.spec.spec import Spec, anchored_to, rewrite_spec_paths
from assembler.spec.validation import block_type_names, validate_spec_dict


def load_spec(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Spec:
    """Load, merge (`extends`), override, default-fill and validate the spec file at `path`."""
    path = Path(path)
    raw = _read_with_extends(path, chain=())
    overridden = apply_overrides(raw, overrides)
    _anchor_new_paths(raw, overridden, Path.cwd())
    return _finish(overridden, source=path)


def load_spec_from_dict(data: dict, source: str | os.PathLike | None = None) -> Spec:
    """A validated Spec from an in-memory spec dict; `source` anchors `extends` and relative paths."""
    source = Path(source) if source is not None else None
    if not isinstance(data, dict):
        raise SpecError(Problem("", f"a spec must be a mapping, got {type(data).__name__}",
                                file=str(source) if source else None))
    too_deep = nesting_problem(data, file=str(source) if source else None)
    if too_deep:
        raise SpecError(too_deep)
    raw = copy.deepcopy(data)
    if "extends" in raw:
        raw = _merge_extends(raw, (source or Path("<memory>")), chain=())
    return _finish(raw, source=source)


def apply_overrides(spec: dict, overrides: Iterable[str]) -> dict:
    """A copy of `spec` with every `dotted.key=value` override set (value parsed as YAML).

    Keys are checked against the schema, so a misspelt key is an error, not a new silent field;
    list items are addressed by index: `model.text.layers.3=linear` or `model.text.layers[3]=linear`.
    """
    result = copy.deepcopy(spec)
    problems: list[Problem] = []
    for text in overrides:
        try:
            _apply_override(result, text)
        except SpecError as error:
            problems.extend(error.problems)
    if problems:
        raise SpecError(problems)
    return result


def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`: mappings merge recursively, anything else (lists too) is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml_mapping(path: Path) -> dict:
    """The top-level mapping of a YAML file; any problem (missing file, syntax) as a SpecError."""
    where = str(path)
    if not path.exists():
        raise SpecError(Problem("", "no such spec file", "check the path", file=where))
    if path.is_dir():
        raise SpecError(Problem("", "is a folder, not a spec file", "pass a .yaml file", file=where))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictSafeLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        kind = "YAML error" if isinstance(error, yaml.constructor.ConstructorError) else "YAML syntax error"
        message = f"{kind}: {error.problem or error.context}"
        hint = error.context if error.problem and error.context else ""
        raise SpecError(Problem("", message, hint or "", file=where,
                                line=mark.line + 1 if mark else None, column=mark.column + 1 if mark else None)) from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise SpecError(Problem("", f"cannot read YAML: {error}", file=where)) from None
    except RecursionError:  # PyYAML's parser recurses once per level of nesting
        raise SpecError(_too_deep_problem("", where)) from None
    too_deep = nesting_problem(data, file=where)
    if too_deep:
        raise SpecError(too_deep)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise SpecError(Problem("", f"a spec must be a YAML mapping (name:, model:, ...), got {got}", file=where))
    return data


# A spec's deepest key is a few levels down (model.text.layer_types.NAME.mixer.block); a value
# nested far deeper is a mistake, and copying, merging or validating it would recurse past
# Python's stack.
MAX_SPEC_DEPTH = 32


def nesting_problem(data: Any, *, file: str | None, prefix: Sequence[str | int] = ()) -> Problem | None:
    """A Problem at the first value nested more than MAX_SPEC_DEPTH mappings or lists deep in
    `data`, else None. Walks with its own stack, so any depth is safe to measure."""
    stack: list[tuple[Any, tuple]] = [(data, tuple(prefix))]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_SPEC_DEPTH:
            return _too_deep_problem(format_path(path[:MAX_SPEC_DEPTH]), file)
        if isinstance(node, dict):
            stack.extend((value, path + (key,)) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, path + (index,)) for index, value in enumerate(node))
    return None


def _too_deep_problem(path: str, file: str | None) -> Problem:
    return Problem(path, f"nested more than {MAX_SPEC_DEPTH} mappings or lists deep",
                   "a spec's values are a few levels deep: look for unbalanced brackets", file=file)


class _StrictSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping (the YAML default keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # unhashable key: SafeLoader itself reports it below
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    f"while reading a mapping (key {key!r} first set on line {first.start_mark.line + 1})",
                    node.start_mark, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# ---------------------------------------------------------------------------------------------


def _with_a_compile_policy_per_block_type(spec: dict) -> dict:
    """`parallel.compile` keyed by block type (the text layer types, and `vision` for a model with a
    vision tower) with every block type present and its defaults filled in, so the resolved spec says
    how each was compiled. A spec too malformed to name its layer types is left for validation to report."""
    text = spec.get("model", {}).get("text") if isinstance(spec.get("model"), dict) else None
    compile_section = spec.get("parallel", {}).get("compile") if isinstance(spec.get("parallel"), dict) else None
    if not isinstance(text, dict) or not isinstance(text.get("layer_types"), dict) or not isinstance(compile_section, dict):
        return spec
    policy_schema = cached_schema()["$defs"]["compile_policy"]
    valid_name = re.compile(cached_schema()["properties"]["parallel"]["properties"]["compile"]["propertyNames"]["pattern"])
    for block_type in block_type_names(spec["model"]):
        # A bad name (or a key that is no name at all, YAML's `5:`) is reported once, where it is.
        if isinstance(block_type, str) and block_type not in compile_section and valid_name.match(block_type):
            compile_section[block_type] = fill_defaults({}, policy_schema)
    return spec


def _finish(raw: dict, source: Path | None) -> Spec:
    raw.pop("extends", None)
    filled = _with_a_compile_policy_per_block_type(fill_defaults(raw))
    validate_spec_dict(filled, file=str(source) if source else None)
    return Spec(
        name=filled["name"],
        model=filled["model"],
        ops=filled["ops"],
        parallel=filled["parallel"],
        train=filled["train"],
        data=filled["data"],
        source=source.resolve() if source else None,
    )


def _read_with_extends(path: Path, chain: tuple[Path, ...]) -> dict:
    return _merge_extends(read_yaml_mapping(path), path, chain)


def _merge_extends(data: dict, path: Path, chain: tuple[Path, ...]) -> dict:
    """`data` (read from `path`) merged on top of the spec it extends, recursively."""
    chain = chain + (path.resolve(),)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    where = str(path)
    if not isinstance(parent, str) or not parent:
        raise SpecError(Problem("extends", f"{parent!r} is not a file path", "write extends: other_spec.yaml", parent, "a path", file=where))
    reason = unusable_path_reason(parent)
    if reason:
        raise SpecError(Problem("extends", f"not a usable path: {reason}", "write extends: other_spec.yaml", parent, "a path",
                                file=where))
    parent_path = Path(os.path.normpath(path.parent / parent))
    if parent_path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in chain + (parent_path.resolve(),))
        raise SpecError(Problem("extends", f"extends cycle: {cycle}", "remove one of the extends", parent, file=where))
    if not parent_path.is_file():
        raise SpecError(Problem("extends", f"{parent!r}: no such spec file ({parent_path})",
                                "extends is relative to the file that contains it", parent, file=where))
    inherited = _read_with_extends(parent_path, chain)
    # A path is relative to the file that wrote it, as `extends:` itself is: an inherited
    # `data.sources[].path` still names the parent's file when the child lives elsewhere.
    to_parent = anchored_to(parent_path.parent)
    rewrite_spec_paths(inherited, lambda value: _relative_to(to_parent(value), path.parent) if to_parent(value) != value else value)
    return deep_merge(inherited, data)


def _relative_to(absolute: str, folder: Path) -> str:
    """`absolute` written relative to `folder` (a spec stays movable with the files beside it)."""
    return Path(os.path.relpath(absolute, folder.absolute())).as_posix()


def _anchor_new_paths(before: dict, after: dict, cwd: Path) -> None:
    """Paths an override set (ones `before` does not hold) are relative to the working directory,
    where the user typed them, not to the spec file: made absolute in `after`, in place."""
    existing: set[str] = set()
    rewrite_spec_paths(copy.deepcopy(before), lambda value: existing.add(value) or value)
    to_cwd = anchored_to(cwd)
    rewrite_spec_paths(after, lambda value: value if value in existing else to_cwd(value))


_KEY_PART = re.compile(r"^([^\[\]]*)((?:\[\d+\])*)$")
_OVERRIDE_EXAMPLE = "write overrides as dotted.key=value, e.g. train.steps=10 or model.text.layers.3=linear"


def _parse_override_key(key: str, where: str) -> list[str | int]:
    parts: list[str | int] = []
    for segment in key.split("."):
        match = _KEY_PART.match(segment)
        if not match or (not match.group(1) and not match.group(2)):
            raise SpecError(Problem(key, "is not a dotted key", _OVERRIDE_EXAMPLE, key, file=where))
        name, indices = match.groups()
        if name:
            parts.append(int(name) if name.isdigit() else name)
        parts.extend(int(index) for index in re.findall(r"\d+", indices))
    return parts


def _apply_override(data: dict, text: str) -> None:
    where = f"override {text if len(text) <= 80 else text[:77] + '...'!r}"
    if "=" not in text:
        raise SpecError(Problem("", "has no '='", _OVERRIDE_EXAMPLE, text, "key=value", file=where))
    key, raw_value = (part.strip() for part in text.split("=", 1))
    if not key:
        raise SpecError(Problem("", "has no key before '='", _OVERRIDE_EXAMPLE, text, "key=value", file=where))
    parts = _parse_override_key(key, where)
    if parts[0] == "extends":
        raise SpecError(Problem("extends", "cannot be overridden", "put the extends: in a spec file", file=where))
    try:
        value = yaml.safe_load(raw_value)
    except yaml.YAMLError as error:
        raise SpecError(Problem(key, f"the value {raw_value!r} is not valid YAML ({error})",
                                "quote it, e.g. key='text: with colon'", raw_value, file=where)) from None
    except RecursionError:
        raise SpecError(_too_deep_problem(key, where)) from None
    too_deep = nesting_problem(value, file=where, prefix=parts)
    if too_deep:
        raise SpecError(too_deep)

    node: Any = data
    schema: dict | None = cached_schema()
    for depth, part in enumerate(parts):
        here = format_path(parts[: depth + 1])
        sub = child_schema(schema, part, instance=node) if schema is not None else None
        if sub is None:
            raise SpecError(_unknown_override_path(schema, part, parts[:depth], here, where, node))
        last = depth == len(parts) - 1
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                size = len(node) if isinstance(node, list) else 0
                raise SpecError(Problem(here, f"index {part} is out of range (the list has {size} items)",
                                        "override a whole list with key=[a, b, c]", part, f"< {size}", file=where))
        elif not isinstance(node, dict):
            raise SpecError(Problem(format_path(parts[:depth]), f"is {type(node).__name__}, not a mapping",
                                    "override the whole value instead", node, "a mapping", file=where))
        if last:
            node[part] = value
        elif isinstance(part, str) and part not in node:
            node[part] = [] if is_list_schema(sub) else {}
        node = node[part]
        schema = sub


def _unknown_override_path(schema: dict | None, part: str | int, parent: list, here: str, where: str, instance: Any = None) -> Problem:
    parent_path = format_path(parent) or "the spec"
    if isinstance(part, int):
        return Problem(here, f"{parent_path} is not a list", "address mapping keys by name", part, file=where)
    if schema is not None and is_list_schema(schema):
        return Problem(here, f"{parent_path} is a list", f"address its items by index, e.g. {parent_path}.0", part, file=where)
    keys = allowed_keys(schema, instance) if schema is not None else []
    if not keys:
        return Problem(here, f"unknown key: {parent_path} has no keys", "override the whole value instead", part, file=where)
    return Problem(here, "unknown key", did_you_mean(part, keys) or f"keys of {parent_path}: {', '.join(keys)}",
                   part, ", ".join(keys), file=where)
