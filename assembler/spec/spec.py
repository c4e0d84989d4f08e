"""`Spec`: a loaded, validated spec with every default filled in.

Build, parallelize, train and export read their sections from here and never from raw YAML:
typed, through `spec.settings` (frozen dataclasses of sections.py: `spec.settings.train.dtype`).
The sections themselves (`spec.model`, `spec.train`, ...) are the resolved document as plain dicts
(JSON Schema shapes, see assembler/schema/spec.schema.json): what is saved with a run, what a
family builds its model from; treat them as read-only — `to_dict()` hands out a copy to modify.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from assembler.spec.errors import SpecError  # noqa: F401  (re-exported: `from assembler.spec import SpecError`)
from assembler.spec.sections import SpecSettings

SECTIONS = ("name", "model", "ops", "parallel", "train", "data")


@dataclass(frozen=True)
class Spec:
    """A resolved spec: `extends` merged, overrides applied, defaults filled, validated.

    source: the file it was loaded from (relative paths inside the spec, like data sources,
    are relative to it), or None for a spec built in memory.
    """

    name: str
    model: dict
    ops: dict
    parallel: dict
    train: dict
    data: dict
    source: Path | None = None

    @functools.cached_property
    def settings(self) -> SpecSettings:
        """The sections typed, every default filled (built once; a `dataclasses.replace`d spec builds its own)."""
        return SpecSettings.of({section: getattr(self, section) for section in SECTIONS[1:]})

    def replaced(self, path: str, value: Any) -> Spec:
        """A copy of the spec with the setting at dotted `path` (`parallel.activation_checkpointing`,
        `model.text.layers`) set to `value`: a decision written into the resolved spec (an `auto`
        made concrete, a probe's smaller model). Not validated again: `value` is the caller's to get right."""
        section, *keys = path.split(".")
        if not keys:
            return dataclasses.replace(self, **{section: value})
        data = copy.deepcopy(getattr(self, section))
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        return dataclasses.replace(self, **{section: data})

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as a fresh nested dict (what `load_spec_from_dict` accepts back)."""
        return {section: copy.deepcopy(getattr(self, section)) for section in SECTIONS}

    def to_yaml(self) -> str:
        """The resolved spec as YAML, saved next to every run so it can be reproduced from its folder.

        Paths that are relative to the spec file (data sources, tokenizer, init_from) are written
        absolute when they exist, so the saved copy still finds them from the run folder.
        """
        header = f"# Resolved spec (defaults filled in) of {self.source}\n" if self.source else "# Resolved spec (defaults filled in)\n"
        data = self.to_dict()
        rewrite_spec_paths(data, self._anchored)
        return header + dump_yaml(data)

    def resolve_path(self, path: str | Path) -> Path:
        """`path` from inside the spec, made absolute: relative paths are relative to the spec file."""
        path = Path(path).expanduser()
        if path.is_absolute():
            return path
        return (self.source.parent if self.source else Path.cwd()) / path

    def _anchored(self, path: str) -> str:
        resolved = self.resolve_path(path)
        return str(resolved) if self.source is not None and resolved.exists() else path


def rewrite_spec_paths(data: dict, rewrite: Callable[[str], str]) -> None:
    """Apply `rewrite` to every file path of a (partial) spec dict, in place: `data.sources[].path`,
    `data.tokenizer`, `train.init_from`, `train.adapters.init_from` (the fields that are relative to
    the spec file that wrote them). Missing sections and null values are left alone."""
    data_section = data.get("data") if isinstance(data.get("data"), dict) else {}
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    sources = data_section.get("sources")
    for source in sources if isinstance(sources, list) else ():
        if isinstance(source, dict) and isinstance(source.get("path"), str):
            source["path"] = rewrite(source["path"])
    adapters = train.get("adapters")
    for section, key in ((data_section, "tokenizer"), (train, "init_from"), (adapters if isinstance(adapters, dict) else {}, "init_from")):
        if isinstance(section.get(key), str) and section[key]:
            section[key] = rewrite(section[key])


def anchored_to(folder: Path) -> Callable[[str], str]:
    """A `rewrite_spec_paths` function making a relative path absolute under `folder` (`~` and
    absolute paths are kept)."""
    def rewrite(path: str) -> str:
        if Path(path).is_absolute() or path.startswith("~"):
            return path
        return os.path.normpath(Path(folder).absolute() / path)
    return rewrite


class _SpecDumper(yaml.SafeDumper):
    """Block-style mappings, one-line lists of scalars (`layers: [linear, full, ...]`)."""


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.Node:
    flow = all(not isinstance(item, (dict, list)) for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


_SpecDumper.add_representer(list, _represent_list)


def dump_yaml(data: dict) -> str:
    """YAML text of `data` in spec style (keys in order, readable lists)."""
    return yaml.dump(data, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True, width=100)
