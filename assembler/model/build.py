"""Spec → nn.Module: the op table, then the spec's family builds the model from registered
blocks (see assembler/model/family.py and assembler/model/towers.py), then initialisation and dtype."""

from __future__ import annotations


import torch
from torch import nn

from assembler.model.family import FAMILY_ATTRIBUTE, family_of
from assembler.model.initialize import initialize_weights
from assembler.spec import Spec
from assembler.spec.errors import UserError
from blocks.ops import AUTO, OpTable, chosen_backends, resolve_ops, unmet_fast_requirements


def resolve_spec_ops(spec: Spec) -> OpTable:
    """The op table the spec selects: `ops.backend` for all ops, then `ops.overrides` per op
    (`auto` decided for this machine; `assemble train` decides it first, in `decide_auto_ops`)."""
    ops = spec.settings.ops
    return resolve_ops(ops.backend, ops.overrides, compute_dtype=compute_dtype(spec, sharded=True))


def compute_dtype(spec: Spec, *, sharded: bool) -> str:
    """The dtype the model's matmuls run in: FSDP2's `parallel.fsdp.param_dtype` when sharded (every
    GPU run), else the parameters' own `train.dtype` (a plain CPU process; no autocast anywhere)."""
    return spec.settings.parallel.fsdp.param_dtype if sharded else spec.settings.train.dtype


def decide_auto_ops(spec: Spec, device_type: str, *, sharded: bool) -> tuple[Spec, str | None]:
    """`ops.backend: auto` decided for `device_type`: (the spec with every op's choice written into
    `ops.overrides`, so its resolved YAML names the ops that ran; a one-line summary for the log).
    Other backends: (spec, None) unchanged."""
    if spec.settings.ops.backend != AUTO:
        return spec, None
    chosen = chosen_backends(
        AUTO, spec.settings.ops.overrides, device_type=device_type, compute_dtype=compute_dtype(spec, sharded=sharded)
    )
    decided = spec.replaced("ops.overrides", chosen)
    fast = [name for name, which in chosen.items() if which == "fast"]
    hf = [name for name, which in chosen.items() if which == "hf"]
    summary = f"ops (auto, {device_type}): fast {', '.join(fast) or '-'}; hf {', '.join(hf) or '-'}"
    return decided, summary


def check_ops_can_train(spec: Spec, device_type: str, *, sharded: bool | None = None) -> None:
    """Refuse up front (UserError) a spec whose `fast` ops cannot run on `device_type` (no CUDA, no
    fla, an fp32 compute dtype for FlashAttention), rather than failing inside the first step.
    `sharded` (default: on CUDA, as every GPU run is) picks the compute dtype, see `compute_dtype`."""
    sharded = device_type == "cuda" if sharded is None else sharded
    dtype = compute_dtype(spec, sharded=sharded)
    ops = spec.settings.ops
    chosen = chosen_backends(ops.backend, ops.overrides, device_type=device_type, compute_dtype=dtype)
    problems = unmet_fast_requirements(chosen, device_type, dtype)
    if problems:
        raise UserError(f"{spec.source or spec.name}: " + "; ".join(problems))


def build_model(
    spec: Spec,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    ops: OpTable | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Build the model the spec describes.

    On `device="meta"` nothing is allocated and no initialisation runs (load or `initialize_weights`
    after `to_empty`). Otherwise parameters are initialised as the reference initialises them
    (seeded by `seed` when given) and cast to `dtype`.
    """
    ops = ops or resolve_spec_ops(spec)
    family = family_of(spec)
    with torch.device(device):
        model = family.build(spec.model, ops)
    setattr(model, FAMILY_ATTRIBUTE, family.name)  # what generic code asks (family_of_model)
    if torch.device(device).type != "meta":
        if seed is not None:
            torch.manual_seed(seed)
        initialize_weights(model, spec)
        model.to(dtype)
    return model
