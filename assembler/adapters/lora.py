"""Put LoRA adapters on a built model (`train.adapters`), initialise them, and read them back.

Order in a run (assembler.train.loop): build → load the base → `add_lora_adapters` (freezes every
base parameter) → `initialize_adapters` → parallelize. A sharded run with `train.init_from` adds
the adapters on the meta device and initialises them after the shards are allocated; the values
are drawn whole from `train.seed` on every rank and sliced (model_tensors.fill_tensor), so every
world size starts from the same adapters.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from assembler.adapters.lora_linear import LoraLinear, fresh_adapter_weights, lora_modules
from assembler.adapters.peft_folder import read_adapter_folder
from assembler.hf.checkpoint.model_tensors import checkpoint_name, fill_tensor, model_tensors
from assembler.spec.errors import Problem, SpecError
from assembler.spec.sections import AdapterSettings
from blocks.constants import DTYPES


def adaptable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Module name → every nn.Linear the model calls as a module (all linear layers of the text and
    vision towers), in model order. The LM head is not one: the loss op reads its weight directly
    (a fused / chunked cross-entropy), so an adapter on it would never run."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {checkpoint_name(name): module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not isinstance(module, LoraLinear) and module is not head}


def add_lora_adapters(model: nn.Module, adapters: dict | AdapterSettings) -> list[str]:
    """Replace every linear layer `adapters.targets` matches by a LoraLinear (same base tensors),
    freeze every parameter that is not an adapter's, in place; returns the adapted module names.

    Raises SpecError at `train.adapters.targets[i]` for a glob that matches no linear layer.
    """
    settings = AdapterSettings.of(adapters)
    candidates = adaptable_linears(model)
    problems, chosen = [], []
    for index, pattern in enumerate(settings.targets):
        matched = [name for name in candidates if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            problems.append(Problem(
                path=f"train.adapters.targets[{index}]", value=pattern, expected="a glob matching a linear layer's module name",
                message=f"{pattern!r} matches no linear layer of this model",
                hint=f"targets are fnmatch globs over module names such as {_examples(candidates)}; `*` adapts all of them",
            ))
        chosen += [name for name in matched if name not in chosen]
    if problems:
        raise SpecError(problems)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    dtype = DTYPES[settings.dtype]
    for name in [n for n in candidates if n in chosen]:  # model order
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LoraLinear(candidates[name], rank=settings.rank, alpha=settings.alpha,
                                         dropout=settings.dropout, adapter_dtype=dtype))
    return [n for n in candidates if n in chosen]


def initialize_adapters(model: nn.Module, seed: int, device: torch.device | str = "cpu",
                        adapter_weights: dict[str, torch.Tensor] | None = None) -> None:
    """Fill every adapter: from `adapter_weights` (our tensor names, e.g. read from a PEFT folder)
    or fresh (PEFT's init: A kaiming-uniform from a generator seeded with `seed`, B zero).
    Works on plain, materialised-from-meta and FSDP2-sharded models alike (every rank calls it)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = model_tensors(model)
    for name, module in lora_modules(model).items():
        if adapter_weights is not None:
            a, b = adapter_weights[f"{name}.lora_A.weight"], adapter_weights[f"{name}.lora_B.weight"]
        else:
            a, b = fresh_adapter_weights(module, generator)
        fill_tensor(tensors[f"{name}.lora_A.weight"], a, device)
        fill_tensor(tensors[f"{name}.lora_B.weight"], b, device)


def prepare_adapters(model: nn.Module, spec, *, device: torch.device | str = "cpu", initialize: bool = True) -> None:
    """`train.adapters` applied to `model` (nothing when null): add them, then (unless the model is
    still on the meta device: `initialize=False`, call `initialize_spec_adapters` later) fill them."""
    if spec.settings.train.adapters is None:
        return
    add_lora_adapters(model, spec.settings.train.adapters)
    if initialize:
        initialize_spec_adapters(model, spec, device=device)


def initialize_spec_adapters(model: nn.Module, spec, *, device: torch.device | str = "cpu") -> None:
    """The adapters' start: `train.adapters.init_from`'s PEFT folder, or fresh from `train.seed`."""
    settings = spec.settings.train.adapters
    weights = None
    if settings.init_from:
        weights = read_adapter_folder(spec.resolve_path(settings.init_from), model, settings)
    initialize_adapters(model, spec.settings.train.seed, device, weights)


def _examples(candidates: dict[str, nn.Linear]) -> str:
    """Two or three module names, from different parts of the model, for an error's hint."""
    names = list(candidates)
    picks = [names[0], names[len(names) // 2], names[-1]] if len(names) >= 3 else names
    return ", ".join(f"`{n}`" for n in dict.fromkeys(picks)) or "(this model has no linear layer)"
