"""Hypothesis strategies for the fuzz tests (tests/test_fuzz_*.py): mutated specs, `-o` overrides,
chat records and the files they name, and the CLI run that must end in exit 0 or 2.

A mutation starts from something valid (a shipped spec, a well-formed record) and breaks it a
little, so most cases get past the first check and reach the deeper readers.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import strategies as st

from assembler.spec.errors import USER_ERROR_EXIT_CODE

REPO = Path(__file__).resolve().parents[1]
SHIPPED_SPECS = sorted((REPO / "specs").glob("*.yaml"))

# Values a parser or a schema treats as edge cases: sizes past int64, non-finite floats, names
# that are not names, text with a NUL byte or past a file name's length.
EDGE_INTEGERS = st.sampled_from([0, -1, 1, 2, 3, 7, 2**31, 2**63, 10**30, -(10**30)])
EDGE_FLOATS = st.sampled_from([0.0, -0.0, 0.5, 1e-300, 1e30, 1e308, math.inf, -math.inf, math.nan])
EDGE_TEXT = st.one_of(
    st.sampled_from(["", "linear", "full", "vision", "auto", "a\x00b", "x" * 5000, "../../etc", "1e30", "yes", "~"]),
    st.text(max_size=12),
)
SCALARS = st.one_of(st.none(), st.booleans(), EDGE_INTEGERS, st.integers(-5, 300), EDGE_FLOATS, EDGE_TEXT)
KEYS = st.one_of(EDGE_TEXT, EDGE_INTEGERS, st.booleans(), st.none())
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(KEYS, children, max_size=3)),
    max_leaves=6,
)


def paths_of(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a nested dict/list, the root excluded."""
    found: list[tuple] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append(prefix + (key,))
        found.extend(paths_of(child, prefix + (key,)))
    return found


def _parent(root: Any, path: tuple) -> Any:
    for key in path[:-1]:
        root = root[key]
    return root


@st.composite
def mutated(draw: st.DrawFn, document: dict, max_mutations: int = 3, depths: tuple[int, ...] = (2, 40)) -> dict:
    """`document` (a spec or a record) with one to `max_mutations` of: a value replaced (or an
    integer by a small one), a key deleted, a key added, a key renamed (to a number or a bad name), a value nested one of
    `depths` lists deep. (PyYAML takes seconds to reach its recursion limit, so a spec's fuzz
    stays shallow and tests/test_input_regressions.py holds the specs thousands deep.)"""
    doc = json.loads(json.dumps(document))  # a private copy
    for _ in range(draw(st.integers(1, max_mutations))):
        paths = paths_of(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(doc, path), path[-1]
        action = draw(st.sampled_from(["replace", "replace", "small", "small", "delete", "add", "rename", "nest"]))
        if action == "small" and isinstance(parent[key], int) and not isinstance(parent[key], bool):
            parent[key] = draw(st.integers(1, 8))  # a size that may still validate, so the build is reached
        elif action == "replace":
            parent[key] = draw(VALUES)
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(KEYS)] = draw(VALUES)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(KEYS)] = parent.pop(key)
        elif action == "nest":
            parent[key] = f"{DEEP}{draw(st.sampled_from(depths))}"
    return doc


# A value nested N lists deep is written as this marker and N brackets are put in its place in the
# text (building the nested value would make the test's own copies and dumps recurse).
DEEP = "deep-list-"


def dump_yaml(document: Any) -> str:
    """YAML text of `document`, with every DEEP marker as that many nested lists."""
    text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    return re.sub(rf"'?{DEEP}(\d+)'?", lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text)


def dump_json(document: Any) -> str:
    """JSON text of `document` (NaN and infinities as JavaScript writes them), DEEP markers as nested lists."""
    text = json.dumps(document, allow_nan=True)
    return re.sub(rf'"{DEEP}(\d+)"', lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text)


@st.composite
def text_damage(draw: st.DrawFn, text: bytes) -> bytes:
    """`text` cut short, or with a few bytes replaced by arbitrary ones."""
    if draw(st.booleans()):
        return text[: draw(st.integers(0, len(text)))]
    data = bytearray(text)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        data[at:at + 1] = draw(st.binary(min_size=0, max_size=3))
    return bytes(data)


def overrides_for(document: dict) -> st.SearchStrategy[list[str]]:
    """`-o` overrides: a path of `document` (dotted, or with [i]) set to a YAML value's text, or junk."""
    paths = [p for p in paths_of(document) if all(isinstance(k, (str, int)) for k in p)]

    def dotted(path: tuple) -> str:
        return ".".join(str(key) for key in path)

    one = st.one_of(
        st.builds(lambda p, v: f"{dotted(p)}={dump_json(v)}", st.sampled_from(paths), VALUES),
        st.builds(lambda p, v: f"{dotted(p)}={v}", st.sampled_from(paths), EDGE_TEXT),
        st.text(max_size=20),
        st.just("model.text.layer_types={5: {mixer: {block: swiglu}}}"),
        st.just("name=" + "[" * 40),
        st.just("name=" + "[" * 40 + "]" * 40),
    )
    return st.lists(one, min_size=1, max_size=2)


def file_states(root: Path, *, top_level_only: bool = False) -> dict[str, object]:
    """Path -> state of every file under `root` (symbolic links not followed): what a run must leave
    as it found it. The state is the content's hash, or for a file over a MiB (a checkpoint shard)
    its size and modification time, which any rewrite changes."""
    states: dict[str, object] = {}
    for path in sorted(root.glob("*") if top_level_only else root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        stat = path.stat()
        states[str(path)] = ((stat.st_size, stat.st_mtime_ns) if stat.st_size > 1 << 20
                             else hashlib.sha256(path.read_bytes()).hexdigest())
    return states


def run_cli(args: list[str]) -> Any:
    """`assemble ARGS` in this process; fails the test on a traceback or an exit code other than 0 or 2."""
    from cli import assemble

    result = CliRunner().invoke(assemble, args, catch_exceptions=True)
    shown = " ".join(a if len(a) < 200 else a[:200] + "..." for a in args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        trace = "".join(traceback.format_exception(result.exception))
        raise AssertionError(f"`assemble {shown}` raised instead of a user error:\n{trace[-6000:]}")
    assert result.exit_code in (0, USER_ERROR_EXIT_CODE), (
        f"`assemble {shown}` exited {result.exit_code}:\n{result.output[-3000:]}")
    assert "Traceback" not in result.output, f"`assemble {shown}` printed a traceback:\n{result.output[-3000:]}"
    return result
