"""LoRA adapters as a PEFT folder: what `peft.PeftModel.from_pretrained(base, folder)` loads onto
transformers' own model, and what `train.adapters.init_from` starts adapters from.

The format is PEFT's (the dependency named for it; peft itself is needed only to load the folder
into transformers, so assemble does not import it):
- `adapter_config.json`: `peft_type: LORA`, `r`, `lora_alpha`, `lora_dropout`, `target_modules` (the
  full module names adapted: PEFT matches a name equal to an entry, so the list says exactly which
  layers), `bias: none`, `task_type: CAUSAL_LM`, `base_model_name_or_path`;
- `adapter_model.safetensors`: `base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight`
  [out, r], `<module>` the HF module path, which is our module name (parameter names are the HF
  checkpoint's). Written in the adapters' dtype (`train.adapters.dtype`).

Atomic and marked like an HF export (hf_checkpoint/writing.py: a hidden partial folder renamed into
place, `.assemble-export`, `overwrite` replaces only a marked folder). Every rank calls
`save_adapter_folder` (each adapter tensor is all-gathered); rank 0 writes.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from assembler.adapters.lora_linear import lora_modules
from assembler.parallel.distributed import first_failure_of_any_rank, process_rank, raise_on_every_rank, shared_by_every_rank
from assembler.common.durable_files import follow_umask, fsync_dir, fsync_file
from assembler.hf.checkpoint.errors import CheckpointError
from assembler.hf.checkpoint.model_tensors import full_tensor, model_tensors
from assembler.hf.checkpoint.writing import EXPORT_MARKER, _publish, check_export_target, export_target, remove_stale_siblings
from assembler.spec.sections import AdapterSettings

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel's attribute path to the wrapped transformers model


def adapter_config(settings: AdapterSettings, target_modules: list[str], base_model_name_or_path: str | None) -> dict:
    """The adapter_config.json PEFT reads (LoraConfig's keys; the ones left out take PEFT's defaults)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": target_modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path,
    }


def save_adapter_folder(model: nn.Module, out_dir: str | Path, spec, *, overwrite: bool = False,
                        inputs: tuple[str | Path, ...] = ()) -> Path:
    """Write `model`'s LoRA adapters as a PEFT folder at `out_dir`; returns `out_dir`."""
    given = Path(out_dir)
    target = export_target(given)
    modules = lora_modules(model)
    if not modules:
        raise CheckpointError(f"{spec.source or spec.name}: the model has no adapters (train.adapters is null); "
                              "export it without --adapter")
    settings = spec.settings.train.adapters
    is_writer = process_rank() == 0
    failure = None
    if is_writer:
        try:
            check_export_target(given, overwrite, inputs=inputs)
            remove_stale_siblings(target)
        except CheckpointError as error:
            failure = str(error)
    raise_on_every_rank(failure, CheckpointError)

    entries = model_tensors(model)
    tensors = {}
    for name in modules:
        for part in ("lora_A.weight", "lora_B.weight"):
            tensor = full_tensor(entries[f"{name}.{part}"])  # a collective under FSDP2: every rank, same order
            if is_writer:
                tensors[f"{PEFT_PREFIX}{name}.{part}"] = tensor.to("cpu", copy=True).contiguous()
    if not is_writer:
        failure = first_failure_of_any_rank(None)
        if failure is not None:
            raise shared_by_every_rank(CheckpointError(failure))
        return given

    init_from = spec.settings.train.init_from
    partial = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        partial.mkdir(parents=True)
        save_file(tensors, str(partial / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
        follow_umask(partial / ADAPTER_WEIGHTS_FILE)
        fsync_file(partial / ADAPTER_WEIGHTS_FILE)
        config = adapter_config(settings, list(modules), str(spec.resolve_path(init_from)) if init_from else None)
        for file, content in ((ADAPTER_CONFIG_FILE, config), (EXPORT_MARKER, {"written_by": "assemble export --adapter", "format": 1})):
            (partial / file).write_text(json.dumps(content, indent=2) + "\n")
            fsync_file(partial / file)
        fsync_dir(partial)
        _publish(partial, target, overwrite)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        first_failure_of_any_rank(f"the adapter export failed on rank 0: {error!r}")
        raise
    first_failure_of_any_rank(None)
    return given


def read_adapter_folder(folder: Path, model: nn.Module, settings: AdapterSettings) -> dict[str, torch.Tensor]:
    """Our tensor name → tensor of the PEFT folder `folder`, checked against the adapters `model`
    holds and `settings` (rank, alpha): CheckpointError naming what differs."""
    config_file, weights_file = folder / ADAPTER_CONFIG_FILE, folder / ADAPTER_WEIGHTS_FILE
    where = "train.adapters.init_from"
    if not config_file.is_file() or not weights_file.is_file():
        raise CheckpointError(f"{where}: {folder} is not a PEFT adapter folder (it needs {ADAPTER_CONFIG_FILE} and "
                              f"{ADAPTER_WEIGHTS_FILE}, as `assemble export RUN OUT --adapter` writes)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{config_file}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object, found {type(config).__name__}")
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{config_file}: peft_type is {config.get('peft_type')!r}; only LORA adapters are read")
    for key, ours, setting in (("r", settings.rank, "rank"), ("lora_alpha", settings.alpha, "alpha")):
        if config.get(key) != ours:
            raise CheckpointError(f"{config_file}: {key} is {config.get(key)!r} but train.adapters.{setting} is {ours!r}; "
                                  f"set train.adapters.{setting}: {config.get(key)!r} to continue these adapters")
    shapes = {f"{name}.{part}": tuple(getattr(module, part.split('.')[0]).weight.shape)
              for name, module in lora_modules(model).items() for part in ("lora_A.weight", "lora_B.weight")}
    with safe_open(str(weights_file), framework="pt") as handle:
        stored = {key.removeprefix(PEFT_PREFIX): key for key in handle.keys()}
        missing, unexpected = sorted(set(shapes) - set(stored)), sorted(set(stored) - set(shapes))
        if missing or unexpected:
            raise CheckpointError(
                f"{weights_file}: its adapters are not the ones train.adapters.targets puts on this model"
                + (f"; missing {missing[:6]}{' ...' if len(missing) > 6 else ''}" if missing else "")
                + (f"; not in the model {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}" if unexpected else "")
                + "; use the targets (and model) the adapters were trained with"
            )
        tensors = {name: handle.get_tensor(key) for name, key in stored.items()}
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != shapes[name]:
            raise CheckpointError(f"{weights_file}: {name} has shape {list(tensor.shape)}, the model's adapter {list(shapes[name])}")
    return tensors
