"""Tensors a checkpoint carries that the assembled model does not have: the released Qwen3.5's
`mtp.*` multi-token-prediction head (15 tensors).

Without `model.mtp` in the spec they are not trained, but an export that dropped them would break speculative decoding in
vLLM / SGLang, so they travel **by reference**: nothing is copied at load time; at export they are
re-read, byte for byte, from the source folder the model was loaded from (`source_dir`), and
written with the dtype and shape they had. The export then holds them itself, so exporting from
an export (or from a run whose `hf/` folder is such an export) carries them on. A training run
records its source folder in its resolved spec (`train.init_from`), which is where export finds
them again. A model built with `model.mtp` holds the head itself (`mtp.*` are its own tensors,
loaded, trained and exported like any other): then nothing is carried (`carried_for`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from assembler.hf.checkpoint.reading import CheckpointFolder, TensorEntry, open_checkpoint_folder, stream_tensors

log = logging.getLogger(__name__)

EXTRA_TENSOR_PREFIXES = ("mtp.",)


def is_extra_tensor(name: str) -> bool:
    """True for checkpoint tensors that belong to no module of the assembled model (`mtp.*`)."""
    return name.startswith(EXTRA_TENSOR_PREFIXES)


def holds_extra_tensors(model_tensor_names: Iterable[str]) -> bool:
    """True when the model has an `mtp.*` head of its own (`model.mtp`): a folder's `mtp.*` are then its tensors."""
    return any(is_extra_tensor(name) for name in model_tensor_names)


def extra_tensor_entries(folder: CheckpointFolder) -> list[TensorEntry]:
    """The extra tensors of an opened folder, in file order (headers only, nothing read)."""
    return [entry for name, entry in folder.tensors.items() if is_extra_tensor(name)]


class ExtraTensorSource:
    """The `mtp.*` tensors of one source folder: listed from its headers, read only when written out."""

    def __init__(self, folder: CheckpointFolder | None):
        self.folder = folder
        self.entries = extra_tensor_entries(folder) if folder is not None else []

    @classmethod
    def open(cls, source_dir: str | Path | None) -> "ExtraTensorSource":
        """The extras of `source_dir` (validated like any checkpoint folder); none when it is None."""
        return cls(open_checkpoint_folder(source_dir) if source_dir is not None else None)

    @classmethod
    def carried_for(cls, folder: CheckpointFolder | None, model_tensor_names: Iterable[str]) -> "ExtraTensorSource":
        """The extras `folder` carries for a model with these tensors: none when it holds the head itself."""
        return cls(None if holds_extra_tensors(model_tensor_names) else folder)

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def read(self, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) exactly as stored (dtype, shape and bytes unchanged)."""
        assert self.folder is not None or not names
        if self.folder is not None:
            yield from stream_tensors(self.folder, names)

    def log_carried(self) -> None:
        """The one log line that says these tensors exist and are carried, not trained."""
        if self.entries:
            log.info(
                "carrying %d mtp.* tensor(s) (multi-token-prediction head) of %s through verbatim: "
                "not part of the assembled model, re-read from there at every export",
                len(self.entries), self.folder.path,
            )


def carry_extra_config(source_config: dict, config: dict) -> dict:
    """`config` plus the source's `mtp_*` fields (top level and text_config), which tell vLLM /
    SGLang the carried head exists; fields the spec already sets are left alone."""
    merged = dict(config)
    for key, value in source_config.items():
        if key.startswith("mtp_"):
            merged.setdefault(key, value)
    source_text = source_config.get("text_config")
    if isinstance(source_text, dict) and isinstance(merged.get("text_config"), dict):
        text = dict(merged["text_config"])
        for key, value in source_text.items():
            if key.startswith("mtp_"):
                text.setdefault(key, value)
        merged["text_config"] = text
    return merged
