"""Refuse a checkpoint whose config.json describes a different model than the spec.

The folder's config is converted to a spec's model section (assembler.hf.config, the same rule
`assemble import` uses) and compared field by field, so a mismatch is named the way the user
writes it in YAML (`model.text.layer_types.full.mixer.num_key_value_heads`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from assembler.hf.checkpoint.errors import CheckpointError
from blocks.constants import VISION_TOKEN_KEYS

MTP_PATH = "model.mtp"

# Fields that change neither the weights nor the forward math: a checkpoint may differ here.
IGNORED_FIELDS = frozenset(
    {
        "model.text.initializer_range",  # random init only, which loading replaces
        "model.vision.initializer_range",
        "model.text.max_position_embeddings",  # a length limit, not a weight or a rotary parameter
    }
)


def check_config_matches_spec(config: dict, spec, config_path: Path) -> None:
    """Raise CheckpointError listing every architecture field where `config` and `spec` disagree."""
    from assembler.hf.config import spec_from_hf_config
    from assembler.spec.errors import SpecError

    try:
        folder_model = spec_from_hf_config(config).model
    except SpecError as err:
        raise CheckpointError(f"{config_path}: not a config a spec can describe:\n{err}") from None
    ignored = IGNORED_FIELDS
    if not spec.settings.model.vision:  # a text-only model reads no vision token, so its ids cannot disagree
        ignored = ignored | {f"model.tokens.{key}" for key in VISION_TOKEN_KEYS}
    # A spec's `model.mtp` has no counterpart in the config a spec is read from (import keeps the
    # head as carried tensors); whether the folder holds the head it describes is the tensor check's.
    differences = [d for d in _differences(spec.model, folder_model, "model")
                   if d[0] not in ignored and not d[0].startswith(MTP_PATH)]
    if differences:
        lines = [f"{config_path} describes a different model than the spec:"]
        lines += [f"  {path}: spec has {ours!r}, the checkpoint has {theirs!r}" for path, ours, theirs in differences]
        lines.append("  Load a checkpoint made for this spec, or fix the spec (or its overrides) to match the checkpoint.")
        raise CheckpointError("\n".join(lines))


def _differences(ours, theirs, path: str) -> Iterator[tuple[str, object, object]]:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in list(ours) + [k for k in theirs if k not in ours]:
            yield from _differences(ours.get(key), theirs.get(key), f"{path}.{key}")
    elif isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)) and len(ours) == len(theirs):
        for index, (mine, other) in enumerate(zip(ours, theirs)):  # name the layer, not the whole list
            yield from _differences(mine, other, f"{path}[{index}]")
    elif ours != theirs:
        yield path, ours, theirs
