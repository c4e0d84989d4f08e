"""The block registry: the only way a spec can name code.

A spec says `block: gated_deltanet`; the assembler looks the name up here under its kind
(`mixer`, `mlp`, `vision`, `merger`, ...). Nothing is ever imported by a name taken from a spec,
so a spec cannot run arbitrary Python.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

ModuleClass = TypeVar("ModuleClass", bound=type[nn.Module])

_REGISTRY: dict[str, dict[str, type[nn.Module]]] = {}


class UnknownBlockError(KeyError):
    """A spec named a block that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return str(self.args[0])


def register(kind: str, name: str) -> Callable[[ModuleClass], ModuleClass]:
    """Class decorator: make `cls` buildable from a spec as `kind`/`name`."""

    def decorate(cls: ModuleClass) -> ModuleClass:
        names = _REGISTRY.setdefault(kind, {})
        if name in names and names[name] is not cls:
            raise ValueError(f"block {kind}/{name} is registered twice: {names[name].__qualname__} and {cls.__qualname__}")
        names[name] = cls
        return cls

    return decorate


def get_block(kind: str, name: str) -> type[nn.Module]:
    """The class registered as `kind`/`name`; an unknown one raises with the known names listed."""
    _import_all_blocks()
    if kind not in _REGISTRY:
        raise UnknownBlockError(f"no block kind {kind!r}; known kinds: {', '.join(sorted(_REGISTRY))}")
    names = _REGISTRY[kind]
    if name not in names:
        raise UnknownBlockError(f"no {kind} block named {name!r}; known {kind} blocks: {', '.join(sorted(names))}")
    return names[name]


def registered_blocks() -> dict[str, list[str]]:
    """{kind: [names]} of every registered block, sorted."""
    _import_all_blocks()
    return {kind: sorted(names) for kind, names in sorted(_REGISTRY.items())}


def _import_all_blocks() -> None:
    # Importing the package runs every block module's @register; done lazily so that
    # `blocks.registry` itself stays import-cycle free.
    import blocks  # noqa: F401
