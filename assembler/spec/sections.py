"""Typed views of the spec sections code reads setting by setting: frozen dataclasses filled from
the schema's defaults, so no caller restates a default (`.get("eps", 1e-8)`) that can drift from
the schema's.

`OptimizerSettings.of(spec.train["optimizer"])` takes a loaded spec's section (already complete)
or a partial one a test writes by hand; either way every missing setting takes the schema default
of its path, and a setting without one is an error naming that path.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from assembler.spec.schema import cached_schema, child_schema, fill_defaults

Section = TypeVar("Section")


def typed_section(cls: type[Section], values: Mapping[str, Any], path: str) -> Section:
    """`cls` (a dataclass) from `values` at the spec's dotted `path`, schema defaults filled in;
    a field that is a dataclass itself is filled from the sub-section of the same name."""
    node: dict | None = cached_schema()
    for key in path.split("."):
        node = child_schema(node, key) if node is not None else None
    if node is None:
        raise KeyError(f"{cls.__name__}: the spec schema has no section {path!r}")
    filled = fill_defaults(dict(values), node)
    hints = typing.get_type_hints(cls)
    settings = {}
    for field in dataclasses.fields(cls):
        if field.name not in filled and field.default is dataclasses.MISSING:
            raise ValueError(f"{path}.{field.name}: missing, and the schema gives it no default")
        value = filled.get(field.name, field.default)
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            value = typed_section(kind, value, f"{path}.{field.name}")
        elif typing.get_origin(kind) is tuple:
            value = tuple(value)
        settings[field.name] = value
    return cls(**settings)


class SpecSection:
    """A typed section found at `PATH` in a spec: `Settings.of(section dict)`."""

    PATH: ClassVar[str]

    @classmethod
    def of(cls: type[Section], values: Mapping[str, Any]) -> Section:
        return typed_section(cls, values, cls.PATH)


@dataclass(frozen=True)
class OptimizerSettings(SpecSection):
    """`train.optimizer`."""

    PATH: ClassVar[str] = "train.optimizer"
    name: str
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float


@dataclass(frozen=True)
class ScheduleSettings(SpecSection):
    """`train.schedule`."""

    PATH: ClassVar[str] = "train.schedule"
    name: str
    warmup_steps: int
    min_lr_ratio: float


@dataclass(frozen=True)
class PackingSettings:
    """`data.packing`. length None: `train.tokens_per_step` (a document must fit one row)."""

    length: int | None
    overlong: str
    window: int


@dataclass(frozen=True)
class ImageSettings:
    """`data.images`: the pixel bounds images are resized into."""

    min_pixels: int
    max_pixels: int


@dataclass(frozen=True)
class VideoSettings:
    """`data.videos`: frame sampling (fps within [min_frames, max_frames]) and the pixel bounds of a
    whole sampled video (frames x height x width)."""

    fps: float
    min_frames: int
    max_frames: int
    min_pixels: int
    max_pixels: int


@dataclass(frozen=True)
class DataSettings(SpecSection):
    """`data` (the sources stay as the spec lists them)."""

    PATH: ClassVar[str] = "data"
    sources: list
    tokenizer: str | None
    packing: PackingSettings
    loss_on: str
    on_error: str
    images: ImageSettings
    videos: VideoSettings
    shuffle: bool
    workers: int


@dataclass(frozen=True)
class FsdpSettings(SpecSection):
    """`parallel.fsdp`."""

    PATH: ClassVar[str] = "parallel.fsdp"
    param_dtype: str
    reduce_dtype: str
    reshard_after_forward: bool
    fp32_params: list
    cpu_offload: bool


@dataclass(frozen=True)
class CheckpointingSettings(SpecSection):
    """`parallel.activation_checkpointing`. layers / op_level: block types and text layer indices
    (mode `selective`); memory_budget_gib: mode `auto`'s budget (None: the card's)."""

    PATH: ClassVar[str] = "parallel.activation_checkpointing"
    mode: str
    placement: str
    layers: list | None = None  # absent in the spec: none
    op_level: list | None = None
    memory_budget_gib: float | None = None


@dataclass(frozen=True)
class CompileSettings:
    """One block type's entry of `parallel.compile`. mode None: torch.compile's default."""

    enabled: bool
    fullgraph: bool
    mode: str | None = None

    @classmethod
    def of(cls, values: Mapping[str, Any], block_type: str) -> CompileSettings:
        return typed_section(cls, values, f"parallel.compile.{block_type}")


@dataclass(frozen=True)
class AdapterSettings(SpecSection):
    """`train.adapters` (when not null): LoRA's rank r, alpha (the update is scaled by alpha / r),
    dropout on the adapter input, the module-name globs adapted, the adapters' dtype and the PEFT
    folder they start from (None: fresh)."""

    PATH: ClassVar[str] = "train.adapters"
    method: str
    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    dtype: str
    init_from: str | None

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class MtpSettings(SpecSection):
    """`model.mtp`: the multi-token-prediction head (absent from a spec: none is built)."""

    PATH: ClassVar[str] = "model.mtp"
    num_hidden_layers: int
    layer_type: str
    loss_weight: float
