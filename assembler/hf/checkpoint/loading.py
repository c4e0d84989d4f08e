"""Load an HF Qwen3.5 folder into an assembled model, tensor by tensor.

The folder is validated first (config vs spec, every shard complete, the key sets equal, every
shape right), so a bad folder fails before the model is touched. Then tensors stream one shard at
a time into the model: a model built on the meta device is materialised one parameter at a time
and an FSDP2-sharded model keeps only its own shard, so host memory never holds the model twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from assembler.hf.checkpoint.config_check import check_config_matches_spec
from assembler.hf.checkpoint.dtype_policy import TIED_HEAD_KEY
from assembler.hf.checkpoint.errors import CheckpointError
from assembler.hf.checkpoint.extra_tensors import ExtraTensorSource, is_extra_tensor
from assembler.hf.checkpoint.model_tensors import (
    checkpoint_name, fill_tensor, is_adapter_tensor, materialize_meta_buffers, model_tensors,
)
from assembler.hf.checkpoint.reading import CheckpointFolder, open_checkpoint_folder, stream_tensors


# Set on a model by load_hf_checkpoint: the folder it was loaded from, so every later export carries
# that folder's mtp.* tensors and tokenizer / processor files without being told again.
HF_SOURCE_ATTRIBUTE = "assemble_hf_source_dir"


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What a load read: the folder (the `source_dir` of later exports), its config, the carried extras."""

    source_dir: Path
    config: dict
    extra_tensor_names: list[str]


def load_hf_checkpoint(
    model: nn.Module,
    checkpoint_dir: str | Path,
    spec=None,
    *,
    device: torch.device | str = "cpu",
) -> LoadedCheckpoint:
    """Fill `model`'s parameters from the HF folder `checkpoint_dir`, in place.

    `model` may be on the meta device (tensors are created on `device`, in the meta tensors'
    dtype), materialised, or FSDP2-sharded (each rank copies its shard; every rank calls this).
    With `spec`, the folder's config.json must describe the same architecture. Missing or
    unexpected tensors are an error listing them, except `mtp.*` for a model without a head of its
    own (no `model.mtp`), which are carried to exports (see extra_tensors). LoRA adapters' tensors
    are the adapters' to fill (assembler.adapters). Raises CheckpointError before touching the model
    if anything is wrong.
    The model remembers the folder (HF_SOURCE_ATTRIBUTE): `save_hf_checkpoint` uses it as the
    default `source_dir`.
    """
    folder = open_checkpoint_folder(checkpoint_dir)
    if spec is not None:
        check_config_matches_spec(folder.config, spec, config_path=folder.path / "config.json")
    targets = {name: entry for name, entry in model_tensors(model).items() if not is_adapter_tensor(name)}  # adapters: not the base's
    embedding_key = _input_embedding_key(model)
    head_from_embedding = _head_filled_from_embedding(folder, targets, embedding_key)
    extras = ExtraTensorSource.carried_for(folder, targets)
    _check_keys_and_shapes(folder, targets, head_from_embedding, carried=set(extras.names))

    for name, value in stream_tensors(folder, [n for n in folder.tensors if n in targets]):
        fill_tensor(targets[name], value, device)
        if head_from_embedding and name == embedding_key:
            fill_tensor(targets[TIED_HEAD_KEY], value, device)
        del value  # one checkpoint tensor alive at a time
    materialize_meta_buffers(model, device)

    extras.log_carried()
    setattr(model, HF_SOURCE_ATTRIBUTE, folder.path)  # later exports carry mtp.* and the side files from it
    return LoadedCheckpoint(source_dir=folder.path, config=folder.config, extra_tensor_names=extras.names)


def _input_embedding_key(model: nn.Module) -> str | None:
    """The checkpoint name of the input embedding's weight (what a tied lm_head reads), for any
    model with transformers' `get_input_embeddings()` (ours and transformers' own); else None."""
    if not hasattr(model, "get_input_embeddings"):
        return None
    weight = model.get_input_embeddings().weight
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is weight and checkpoint_name(n) != TIED_HEAD_KEY]
    return checkpoint_name(names[0]) if names else None


def _head_filled_from_embedding(folder: CheckpointFolder, targets: dict, embedding_key: str) -> bool:
    """True when the model holds an untied `lm_head.weight` the checkpoint leaves to the tied embedding."""
    tied = folder.config.get("tie_word_embeddings", (folder.config.get("text_config") or {}).get("tie_word_embeddings", False))
    return bool(tied) and TIED_HEAD_KEY in targets and TIED_HEAD_KEY not in folder.tensors and embedding_key in targets


def _check_keys_and_shapes(folder: CheckpointFolder, targets: dict, head_from_embedding: bool, *, carried: set[str]) -> None:
    stored = {name for name in folder.tensors if name not in carried}
    expected = set(targets) - ({TIED_HEAD_KEY} if head_from_embedding else set())
    missing, unexpected = sorted(expected - stored), sorted(stored - expected)
    if missing or unexpected:
        lines = [f"{folder.path}: the checkpoint's tensors do not match the model's."]
        if missing:
            lines.append(f"  missing from the checkpoint ({len(missing)}): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            lines.append(
                f"  in the checkpoint but not in the model ({len(unexpected)}): "
                + ", ".join(f"{n} ({folder.tensors[n].file})" for n in unexpected[:20])
                + (" ..." if len(unexpected) > 20 else "")
            )
        lines.append("  Is this checkpoint for this spec (layer count, layer types, vision tower, model.mtp)?")
        if any(is_extra_tensor(name) for name in missing):
            lines.append("  The spec's model.mtp head needs the folder's mtp.* tensors; remove model.mtp to load a folder without them.")
        raise CheckpointError("\n".join(lines))
    for name in sorted(stored):
        want, have = tuple(targets[name].tensor.shape), folder.tensors[name].shape
        if want != have:
            raise CheckpointError(
                f"{folder.path / folder.tensors[name].file}: tensor {name!r} has shape {list(have)}, "
                f"the model expects {list(want)}; the checkpoint is for a different architecture"
            )
