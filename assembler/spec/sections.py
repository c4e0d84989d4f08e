"""Typed views of the spec's sections: frozen dataclasses filled from the schema's defaults, so no
caller restates a default (`.get("eps", 1e-8)`) that can drift from the schema's, and no code
outside the spec package indexes a section as a dict.

A loaded spec gives them all at once: `spec.settings.train.dtype`, `spec.settings.parallel.fsdp.cpu_offload`
(`SpecSettings`, built once per Spec). `OptimizerSettings.of(section)` takes a loaded spec's section
(already complete), a partial one a test writes by hand, or the typed view itself; either way every
missing setting takes the schema default of its path, and a setting without one is an error naming
that path.

What stays a mapping: the settings a block owns (a layer type's mixer and mlp, the vision tower,
the norms, rope) and the per-op backend overrides. Their schema is the registered block's, a
plugin's included, so they are handed on whole to the block's constructor or the op table.
"""

from __future__ import annotations

import dataclasses
import types
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
        kind = _optional_dataclass(hints[field.name]) or hints[field.name]
        if dataclasses.is_dataclass(kind) and value is not None:
            value = typed_section(kind, value, f"{path}.{field.name}")
        elif typing.get_origin(kind) is tuple:
            value = tuple(value)
        settings[field.name] = value
    return cls(**settings)


def _optional_dataclass(kind: Any) -> type | None:
    """`X` for a field typed `X | None` where X is a dataclass (a nullable sub-section), else None."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        classes = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(classes) == 1 and dataclasses.is_dataclass(classes[0]):
            return classes[0]
    return None


class SpecSection:
    """A typed section found at `PATH` in a spec: `Settings.of(section dict)`."""

    PATH: ClassVar[str]

    @classmethod
    def of(cls: type[Section], values: Mapping[str, Any] | Section) -> Section:
        if isinstance(values, cls):  # already typed (a loaded spec's `settings`)
            return values
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
    def of(cls, values: Mapping[str, Any] | CompileSettings, block_type: str) -> CompileSettings:
        if isinstance(values, cls):
            return values
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


@dataclass(frozen=True)
class TrainCheckpointSettings(SpecSection):
    """`train.checkpoint`: the saved training state (not activation checkpointing), every N steps,
    the last `keep_last` kept."""

    PATH: ClassVar[str] = "train.checkpoint"
    every: int
    keep_last: int


@dataclass(frozen=True)
class TrainSettings(SpecSection):
    """`train`. grad_clip None: no clipping; output_dir None: runs/<spec name>; init_from: an HF
    folder the weights start from; freeze: parameter-name globs; adapters None: no LoRA."""

    PATH: ClassVar[str] = "train"
    steps: int
    tokens_per_step: int
    grad_accumulation: int
    optimizer: OptimizerSettings
    schedule: ScheduleSettings
    grad_clip: float | None
    seed: int
    dtype: str
    checkpoint: TrainCheckpointSettings
    output_dir: str | None
    log_every: int
    init_from: str | None
    freeze: tuple[str, ...]
    adapters: AdapterSettings | None
    export_hf: bool


@dataclass(frozen=True)
class OpsSettings(SpecSection):
    """`ops`: the backend (`hf`, `fast`, `auto`) and per-op overrides (op name -> backend)."""

    PATH: ClassVar[str] = "ops"
    backend: str
    overrides: dict


@dataclass(frozen=True)
class PrecisionSettings(SpecSection):
    """`parallel.precision`: matmul `param_dtype` (as the parameters compute) or `float8_rowwise`."""

    PATH: ClassVar[str] = "parallel.precision"
    matmul: str


@dataclass(frozen=True)
class ParallelSettings(SpecSection):
    """`parallel`. compile: block type -> its settings, as the spec lists them (`compile_of`)."""

    PATH: ClassVar[str] = "parallel"
    fsdp: FsdpSettings
    activation_checkpointing: CheckpointingSettings
    compile: dict
    precision: PrecisionSettings

    def compile_of(self, block_type: str) -> CompileSettings:
        """The compile settings of `block_type` (the schema's defaults when the spec names none)."""
        return CompileSettings.of(self.compile.get(block_type, {}), block_type)


@dataclass(frozen=True)
class TokenSettings(SpecSection):
    """`model.tokens`: the special token ids the data pipeline and the vision tower agree on."""

    PATH: ClassVar[str] = "model.tokens"
    image: int
    video: int
    vision_start: int
    vision_end: int
    eos: int


@dataclass(frozen=True)
class TextSettings(SpecSection):
    """`model.text`: the text tower's own settings. layers: a layer type name per layer;
    layer_types: name -> {mixer, mlp} (block-owned settings); norms, rope: their blocks' settings."""

    PATH: ClassVar[str] = "model.text"
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    layers: tuple[str, ...]
    layer_types: dict
    norms: dict
    rms_norm_eps: float
    rope: dict
    max_position_embeddings: int
    tie_word_embeddings: bool
    initializer_range: float


@dataclass(frozen=True)
class ModelSettings(SpecSection):
    """`model`. vision: the vision tower's block settings (None: a text-only model); mtp None: no
    multi-token-prediction head. A family builds from the section itself (`spec.model`)."""

    PATH: ClassVar[str] = "model"
    family: str
    text: TextSettings
    tokens: TokenSettings
    vision: dict | None = None
    mtp: MtpSettings | None = None


@dataclass(frozen=True)
class SpecSettings:
    """Every section of a loaded spec, typed (`spec.settings`)."""

    model: ModelSettings
    ops: OpsSettings
    parallel: ParallelSettings
    train: TrainSettings
    data: DataSettings

    @classmethod
    def of(cls, sections: Mapping[str, Any]) -> SpecSettings:
        return cls(**{field.name: hint.of(sections[field.name]) for field, hint in
                      zip(dataclasses.fields(cls), (ModelSettings, OpsSettings, ParallelSettings, TrainSettings, DataSettings))})
