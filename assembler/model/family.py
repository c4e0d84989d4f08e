"""Model families: everything one kind of model needs beyond its blocks, behind one interface.

A spec names its family in `model.family` (the schema's default: `qwen3_5`); an HF `config.json` names one by
its `model_type`. Generic code (build, parallelize, train, bench, export, summary) asks the family
and never names a family's module paths, its HF keys or its blocks:

    family = family_of(spec)          # or family_for_hf_model_type(config["model_type"])
    model = family.build(spec.model, ops)
    for ref in family.blocks(model): ...

The built-in families live in `assembler/families/<name>/`; a third-party package adds one through
the entry-point group `assemble.families` (each entry point names a `ModelFamily` instance), the
ecosystem's plugin convention. A spec still never names code: `model.family` is looked up here.
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Iterator

from torch import nn

if TYPE_CHECKING:
    from assembler.spec import Spec
    from blocks.ops import OpTable

ENTRY_POINT_GROUP = "assemble.families"
FAMILY_ATTRIBUTE = "assemble_family"  # the attribute of a built model naming its family
BUILTIN_FAMILY_MODULES = ("assembler.families.qwen3_5", "assembler.families.qwen3")


@dataclass(frozen=True)
class BlockRef:
    """One repeated block of a built model, as parallelize and the summary see it.

    path:       its module path, e.g. `model.language_model.layers.3` (the checkpoint's prefix).
    module:     the block (a decoder layer, a vision block).
    block_type: the name compile and checkpointing policies use: a text layer type, or `vision`.
    """

    path: str
    module: nn.Module
    block_type: str


class ModelFamily(abc.ABC):
    """What a family provides. Subclass it in `assembler/families/<name>/` (or a plugin package)
    and register one instance with `register_family`."""

    name: str  # the spec's model.family
    hf_model_types: tuple[str, ...]  # the config.json model_type(s) `model_from_hf` reads

    @abc.abstractmethod
    def build(self, model_spec: dict, ops: OpTable) -> nn.Module:
        """The top-level module of `model_spec` (the spec's `model` section), on the current default
        device, uninitialised (see `init_std`). Parameter names are the HF checkpoint's."""

    @abc.abstractmethod
    def blocks(self, model: nn.Module) -> Iterator[BlockRef]:
        """The repeated blocks of `model`, in forward order: what FSDP2 shards one unit each and
        what compile and activation checkpointing apply to."""

    @abc.abstractmethod
    def init_std(self, model_spec: dict, module_path: str) -> float:
        """The standard deviation the normal init of the weight at `module_path` uses (the
        `initializer_range` of the tower it belongs to)."""

    @abc.abstractmethod
    def summary_rows(self, model: nn.Module) -> list[tuple[str, str, nn.Module]]:
        """(module path, what it is, module) of every top-level piece, in forward order, for
        `assemble build --summary`; `towers` groups the parameter counts."""

    def towers(self, model: nn.Module) -> dict[str, nn.Module]:
        """{tower name: module} whose parameters the summary counts apart (e.g. `vision`); what is
        left is the text tower's. Default: none."""
        return {}

    @abc.abstractmethod
    def model_from_hf(self, config: dict, where: str | None) -> tuple[dict, list]:
        """(the spec's `model` section, problems) read from an HF config.json dict. `problems`
        lists `assembler.spec.errors.Problem`s, one per field the spec cannot represent (an import
        must never silently build another model); the section is ignored when it is not empty."""

    @abc.abstractmethod
    def hf_config(self, spec: Spec, dtype: str) -> dict:
        """The config.json transformers loads for `spec.model` (SpecError naming the fields a
        spec chose that transformers' class cannot express)."""

    def fine_tuning_settings(self, *, lora: bool) -> dict:
        """The `parallel` and `train` settings `assemble import-hf` writes for fine-tuning a released
        checkpoint of this family (the model and `train.init_from` are added to them). Default:
        activation checkpointing `auto` (the least recomputation that fits the card; none on the
        CPU), a fine-tuning lr (1e-5 full, 2e-4 for LoRA adapters: rank 16 on every linear layer,
        the frozen base kept in bf16)."""
        train: dict = {"steps": 1000, "tokens_per_step": 4096, "optimizer": {"lr": 2.0e-4 if lora else 1.0e-5},
                       "schedule": {"warmup_steps": 30}, "checkpoint": {"every": 250, "keep_last": 1}}
        if lora:
            train["dtype"] = "bfloat16"
            train["adapters"] = {"method": "lora", "rank": 16, "alpha": 32, "dropout": 0.05, "targets": ["*"], "dtype": "float32"}
        return {"parallel": {"activation_checkpointing": {"mode": "auto"}}, "train": train}

    fp32_export_suffixes: tuple[str, ...] = ()  # tensors an export keeps in fp32, as the releases do
    supports_mtp: bool = False  # whether `build` makes the `model.mtp` head (validation refuses it otherwise)


_FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Make `family` nameable by `model.family` and by its HF model types; returns it."""
    known = _FAMILIES.get(family.name)
    if known is not None and known is not family:
        raise ValueError(f"model family {family.name!r} is registered twice: {type(known).__qualname__} and {type(family).__qualname__}")
    _FAMILIES[family.name] = family
    return family


def family_named(name: str) -> ModelFamily:
    """The family registered as `name`; KeyError listing the known ones otherwise."""
    families = registered_families()
    if name not in families:
        raise KeyError(f"no model family {name!r}; known families: {', '.join(sorted(families))}")
    return families[name]


def family_of(spec: Spec) -> ModelFamily:
    """The family a loaded Spec names (`model.family`, filled with the schema's default)."""
    return family_named(spec.settings.model.family)


def family_of_model(model: nn.Module) -> ModelFamily:
    """The family that built `model` (`assembler.model.build.build_model` records it on the module)."""
    name = getattr(model, FAMILY_ATTRIBUTE, None)
    if name is None:
        raise ValueError(f"{type(model).__qualname__} was not built by assembler.model.build.build_model: its model family is unknown")
    return family_named(name)


def family_for_hf_model_type(model_type: str) -> ModelFamily | None:
    """The family that reads config.json files of `model_type`, or None."""
    return next((f for f in registered_families().values() if model_type in f.hf_model_types), None)


def registered_families() -> dict[str, ModelFamily]:
    """{name: family} of the built-in families and those the installed plugins add."""
    _load_families()
    return dict(_FAMILIES)


@functools.cache
def _load_families() -> None:
    import importlib

    for module in BUILTIN_FAMILY_MODULES:
        importlib.import_module(module)  # each registers its family on import
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        family: Any = entry_point.load()
        register_family(family() if isinstance(family, type) else family)
