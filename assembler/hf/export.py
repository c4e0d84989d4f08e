"""Export what a user points at as an HF folder transformers / vLLM / SGLang load (`assemble export`).

The source is one of
- an HF model folder (config.json + safetensors): re-exported through the assembled model (a
  round trip that proves the model reads and writes it losslessly) with the dtype policy;
- a training checkpoint folder (`step_NNNNNN` with COMPLETE) or a run folder (its latest complete
  checkpoint): the model its resolved_spec.yaml describes, loaded from the DCP checkpoint;
- a run folder without checkpoints but with its `hf/` export: that export, re-exported.
Tokenizer / processor files and the `mtp.*` tensors come from the HF folder the weights started
from (the input folder itself, or the run's `train.init_from`); a model with its own head
(`model.mtp`) writes its `mtp.*` itself.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from assembler.train.run_dir import ADAPTER_EXPORT_FOLDER, HF_EXPORT_FOLDER, RESOLVED_SPEC_FILE

EXPORT_DTYPES = ("bfloat16", "float32")  # what an HF export holds (the dtype policy keeps its fp32 tensors fp32)


def _print_note(line: str) -> None:
    print(line, file=sys.stderr)


@dataclass(frozen=True)
class ExportSource:
    """Where the weights come from: an HF folder or a DCP checkpoint, with the spec that describes them."""

    spec: object
    hf_dir: Path | None  # weights in an HF folder, or
    dcp_dir: Path | None  # weights in a training checkpoint
    source_dir: Path | None  # tokenizer files and mtp.* tensors


def export(path: Path, out_dir: Path, *, shard_size: int | str, dtype: torch.dtype | None = None, overwrite: bool = False,
           adapter: bool = False, merge: bool = False) -> Path:
    """Build the model the source describes on the meta device, load it, write it; returns OUT_DIR.

    `dtype`: of every tensor the family does not keep in fp32; None: the dtype the model computes in
    (`model_export_dtype`), as the run's own `hf/` export is written.

    A LoRA run's checkpoint (`train.adapters`) exports merged (W + (alpha / r) B A: a plain HF
    folder; `merge` says so explicitly), or with `adapter` its adapters alone as a PEFT folder
    (assembler.adapters.peft_folder). `adapter` of a source without adapters is a CheckpointError.
    """
    from assembler.adapters.lora import prepare_adapters
    from assembler.adapters.peft_folder import save_adapter_folder
    from assembler.model.build import build_model
    from assembler.hf.checkpoint import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
    from assembler.hf.checkpoint.writing import check_export_target

    if adapter and merge:
        raise CheckpointError("--adapter and --merge: choose one (the adapters alone, or the model with them merged in)")
    from assembler.hf.checkpoint.dtype_policy import model_export_dtype

    source = resolve_export_source(Path(path))
    dtype = dtype if dtype is not None else model_export_dtype(source.spec)
    has_adapters = source.dcp_dir is not None and source.spec.settings.train.adapters is not None
    if adapter and not has_adapters:
        what = "an HF folder, which holds no adapters" if source.dcp_dir is None else "a run trained without train.adapters"
        if source.dcp_dir is None and (Path(path) / ADAPTER_EXPORT_FOLDER).is_dir():
            what += f" (this run has no checkpoint; its {ADAPTER_EXPORT_FOLDER}/ folder is its adapters' PEFT export)"
        raise CheckpointError(f"{path}: --adapter needs a LoRA run's checkpoint (train.adapters set) and this is {what}; "
                              "export it without --adapter for the full model")
    inputs = tuple(p for p in (Path(path), source.hf_dir, source.dcp_dir, source.source_dir) if p is not None)
    check_export_target(Path(out_dir), overwrite, inputs=inputs)  # before loading: a refusal costs nothing
    model = build_model(source.spec, device="meta")
    if source.hf_dir is not None:
        _keep_export_dtypes_on_meta(model, dtype)  # materialise straight into the written dtypes: half the memory
        load_hf_checkpoint(model, source.hf_dir, source.spec)
    else:
        prepare_adapters(model, source.spec, initialize=False)  # the checkpoint holds the adapters' values
        _load_training_checkpoint(model, source.dcp_dir)
    if adapter:
        return save_adapter_folder(model, out_dir, source.spec, overwrite=overwrite, inputs=inputs)
    if merge and not has_adapters:
        _print_note(f"{path}: no adapters to merge (train.adapters is null); exporting the model as it is")
    return save_hf_checkpoint(model, out_dir, source.spec, source_dir=source.source_dir, shard_size=shard_size, dtype=dtype,
                              overwrite=overwrite, inputs=inputs)


def resolve_export_source(path: Path, note: Callable[[str], None] = _print_note) -> ExportSource:
    """Where `path`'s weights and spec come from (see the module docstring); `note` gets a line
    about each damaged checkpoint a run folder's newest whole one was chosen over."""
    from assembler.hf.checkpoint import CheckpointError
    from assembler.hf.checkpoint.reading import read_config
    from assembler.hf.config import spec_from_hf_config
    from assembler.train.checkpoint import is_complete, latest_loadable_checkpoint, verify_checkpoint

    if not path.is_dir():
        raise CheckpointError(f"{path}: no such folder; expected an HF model folder, a training checkpoint or a run folder")
    if (path / "config.json").is_file():
        return ExportSource(spec=spec_from_hf_config(read_config(path)), hf_dir=path, dcp_dir=None, source_dir=path)
    if is_complete(path):
        verify_checkpoint(path)  # named: a damaged one is an error naming the file
        checkpoint = path
    else:  # a run folder: its newest whole checkpoint, damaged newer ones reported
        checkpoint = latest_loadable_checkpoint(path / "checkpoints", note)
    if checkpoint is not None:
        spec = _load_resolved_spec(checkpoint / RESOLVED_SPEC_FILE)
        init_from = spec.settings.train.init_from
        return ExportSource(spec=spec, hf_dir=None, dcp_dir=checkpoint, source_dir=Path(init_from) if init_from else None)
    if (path / HF_EXPORT_FOLDER / "config.json").is_file():
        spec = _load_resolved_spec(path / RESOLVED_SPEC_FILE)
        return ExportSource(spec=spec, hf_dir=path / HF_EXPORT_FOLDER, dcp_dir=None, source_dir=path / HF_EXPORT_FOLDER)
    raise CheckpointError(
        f"{path}: nothing to export here: no config.json (HF folder), no complete training checkpoint "
        f"(checkpoints/step_NNNNNN with COMPLETE) and no {HF_EXPORT_FOLDER}/ export"
    )


def _load_resolved_spec(path: Path):
    from assembler import load_spec
    from assembler.hf.checkpoint import CheckpointError

    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a training checkpoint or run folder keeps the spec that wrote it here")
    return load_spec(path)


def _keep_export_dtypes_on_meta(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Give meta parameters the dtypes they will be written in (costs nothing on meta)."""
    from assembler.model.family import family_of_model
    from assembler.hf.checkpoint.dtype_policy import export_dtype

    fp32_suffixes = family_of_model(model).fp32_export_suffixes
    for name, parameter in model.named_parameters():
        parameter.data = parameter.data.to(export_dtype(name, dtype, fp32_suffixes=fp32_suffixes))


def _load_training_checkpoint(model: torch.nn.Module, checkpoint: Path) -> None:
    """The model part of a DCP training checkpoint (assembler.train.checkpoint's layout), into a
    meta-built model materialised on the CPU. DCP files are this project's own (never downloaded)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    model.to_empty(device="cpu")  # modules re-derive their non-persistent buffers (rotary) here
    if getattr(model, "tie_word_embeddings", False):
        model.tie_weights()  # to_empty unties
    state = {"model": get_model_state_dict(model)}
    with warnings.catch_warnings():  # DCP warns that one process means no process group: intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(checkpoint))
    set_model_state_dict(model, state["model"])
