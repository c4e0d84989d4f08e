"""The layout ARCHITECTURE.md draws holds in the imports: no import cycle between modules of
`assembler/` and `blocks/` (an import inside a function counts too), `blocks` imports nothing of the
assembler, and `assembler/`'s top level holds only `__init__.py` and its packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted([*(ROOT / "assembler").rglob("*.py"), *(ROOT / "blocks").rglob("*.py")]):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours `path` imports (`from package import module` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    # A package's __init__ re-exports its modules' names; an edge to it is not a dependency on
    # every module inside, so module-to-module edges alone decide a cycle.
    return {name: _imports(path, modules) - packages - {name} for name, path in modules.items()}


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_blocks_import_nothing_of_the_assembler(graph):
    upward = {name: sorted(d for d in deps if d.startswith("assembler")) for name, deps in graph.items() if name.startswith("blocks")}
    assert {name: deps for name, deps in upward.items() if deps} == {}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_assembler_top_level_is_packages_only():
    loose = sorted(p.name for p in (ROOT / "assembler").iterdir() if p.is_file() and p.name != "__init__.py")
    assert loose == []
