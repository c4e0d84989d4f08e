"""The block registry: the only way a spec can name code.

A spec says `block: gated_deltanet`; the assembler looks the name up here under its kind
(`mixer`, `mlp`, `vision`, `merger`, ...). Nothing is ever imported by a name taken from a spec,
so a spec cannot run arbitrary Python.
"""

from __future__ import annotations

from importlib.metadata import entry_points, packages_distributions
from typing import Callable, TypeVar

from torch import nn

ModuleClass = TypeVar("ModuleClass", bound=type[nn.Module])

_REGISTRY: dict[str, dict[str, type[nn.Module]]] = {}
# Bumped by every change of _REGISTRY, so what is derived from it (the assembled spec schema) can
# be cached per version and rebuilt when a block is registered at run time (a plugin, a test).
_version = 0


class UnknownBlockError(KeyError):
    """A spec named a block that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would repr() the message, quotes and all
        return str(self.args[0])


def register(kind: str, name: str) -> Callable[[ModuleClass], ModuleClass]:
    """Class decorator: make `cls` buildable from a spec as `kind`/`name`.

    A block a spec section names (kinds `mixer`, `mlp`) carries `settings_schema`, the JSON Schema
    of its settings, from which the spec schema is assembled (assembler.spec.schema)."""

    def decorate(cls: ModuleClass) -> ModuleClass:
        names = _REGISTRY.setdefault(kind, {})
        if name in names and names[name] is not cls:
            raise ValueError(f"block {kind}/{name} is registered twice: {names[name].__qualname__} and {cls.__qualname__}")
        if name not in names:  # registering the same class again (a module re-run) changes nothing
            names[name] = cls
            _bump_version()
        return cls

    return decorate


def unregister(kind: str, name: str) -> None:
    """Forget `kind`/`name` (a block a test registered for itself); an unknown one raises."""
    if name not in _REGISTRY.get(kind, {}):
        raise UnknownBlockError(f"cannot unregister {kind}/{name}: it is not registered")
    del _REGISTRY[kind][name]
    if not _REGISTRY[kind]:
        del _REGISTRY[kind]
    _bump_version()


def registry_version() -> int:
    """A number that changes whenever a block is registered or unregistered (builtins loaded first)."""
    _import_all_blocks()
    return _version


def _bump_version() -> None:
    global _version
    _version += 1


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


def blocks_of(kind: str) -> dict[str, type[nn.Module]]:
    """{name: class} of the blocks registered under `kind`, sorted by name (empty for an unknown kind)."""
    _import_all_blocks()
    return dict(sorted(_REGISTRY.get(kind, {}).items()))


ENTRY_POINT_GROUP = "assemble.blocks"  # plugin packages: each entry point names a module that registers blocks
_plugins_loaded = False


def _import_all_blocks() -> None:
    # Importing the package runs every block module's @register; done lazily so that
    # `blocks.registry` itself stays import-cycle free. Then, once, the installed plugins' modules
    # (the ecosystem's entry-point convention), whose imports run their own @register.
    global _plugins_loaded
    import blocks  # noqa: F401

    if not _plugins_loaded:
        _plugins_loaded = True
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            entry_point.load()


def origin(obj: object) -> str:
    """Where a registered class (or instance) comes from: its module and the installed distribution
    that ships it, e.g. `blocks.gated_attention (assemble)`; for `assemble validate --verbose`."""
    module = (obj if isinstance(obj, type) else type(obj)).__module__
    distributions = packages_distributions().get(module.split(".")[0], [])
    return f"{module} ({', '.join(dict.fromkeys(distributions))})" if distributions else module
