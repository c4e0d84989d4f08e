"""The model side of checkpoint I/O: which tensors a model holds under which checkpoint names, and
how one is filled in place — on the meta device, materialised, or an FSDP2 DTensor shard.

Names are the module's own state_dict names (they equal the HF checkpoint's). A tensor reachable
under several names (the tied `lm_head.weight` is `embed_tokens.weight`) is listed once, under
its first name, and every alias is kept pointing at the same tensor when it is materialised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

try:  # DTensor is how FSDP2 stores sharded parameters
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - torch builds without distributed
    DTensor = None  # type: ignore[assignment,misc]
    distribute_tensor = None  # type: ignore[assignment]


# Wrapper modules that parallelize may insert (torch.compile, activation checkpointing, FSDP1) add
# these segments to module paths; the checkpoint name is the path without them, as DCP's
# get_state_dict also reads it.
WRAPPER_SEGMENTS = ("_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module")


# LoRA adapters' tensors (assembler/adapters) live beside the base weights they adapt but belong to
# no HF base checkpoint: a base load leaves them to the adapters' own initialisation.
ADAPTER_TENSOR_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def is_adapter_tensor(name: str) -> bool:
    return name.endswith(ADAPTER_TENSOR_SUFFIXES)


def checkpoint_name(module_path: str) -> str:
    """`model.language_model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight` → without the wrapper segment."""
    return ".".join(part for part in module_path.split(".") if part not in WRAPPER_SEGMENTS)


@dataclass
class ModelTensor:
    """One distinct tensor of the model: its checkpoint name, and every (module, attribute) holding it."""

    name: str
    tensor: torch.Tensor
    is_parameter: bool
    slots: list[tuple[nn.Module, str]] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)  # other names of the same tensor (a tied head)


def model_tensors(model: nn.Module) -> dict[str, ModelTensor]:
    """Checkpoint name → ModelTensor for every parameter and persistent buffer, one entry per distinct tensor."""
    by_id: dict[int, ModelTensor] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        path = checkpoint_name(module_name)
        prefix = f"{path}." if path else ""
        persistent_buffers = {
            name: buf for name, buf in module._buffers.items() if buf is not None and name not in module._non_persistent_buffers_set
        }
        for attr, tensor, is_parameter in [(n, p, True) for n, p in module._parameters.items() if p is not None] + [
            (n, b, False) for n, b in persistent_buffers.items()
        ]:
            entry = by_id.get(id(tensor))
            if entry is None:
                entry = by_id[id(tensor)] = ModelTensor(name=prefix + attr, tensor=tensor, is_parameter=is_parameter)
            elif prefix + attr != entry.name and prefix + attr not in entry.aliases:
                entry.aliases.append(prefix + attr)
            if not any(m is module and a == attr for m, a in entry.slots):
                entry.slots.append((module, attr))
    return {entry.name: entry for entry in by_id.values()}


def is_dtensor(tensor: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


@torch.no_grad()
def fill_tensor(entry: ModelTensor, value: torch.Tensor, device: torch.device | str) -> None:
    """Copy the full checkpoint tensor `value` into the model tensor `entry`, in the model's dtype.

    - meta: allocate it on `device` (only now: the model is never held twice) and point every
      alias at the new tensor;
    - FSDP2 DTensor: keep only this rank's shard (`distribute_tensor` slices locally, no
      communication: every rank read the same file) and copy it into the local shard in place;
    - materialised: copy in place.
    """
    target = entry.tensor
    if is_dtensor(target):
        local = target.to_local()
        if local.device.type == "meta":
            raise ValueError(
                f"{entry.name}: FSDP2 parameter still on the meta device; call model.to_empty(device=...) after "
                "fully_shard and before load_hf_checkpoint"
            )
        shard = distribute_tensor(value.to(local.device), target.device_mesh, target.placements, src_data_rank=None)
        local.copy_(shard.to_local())
        return
    if target.device.type == "meta":
        fresh = torch.empty(target.shape, dtype=target.dtype, device=device)
        fresh.copy_(value)
        new = nn.Parameter(fresh, requires_grad=target.requires_grad) if entry.is_parameter else fresh
        for module, attr in entry.slots:
            (module._parameters if entry.is_parameter else module._buffers)[attr] = new
        entry.tensor = new
        return
    target.copy_(value)


@torch.no_grad()
def full_tensor(entry: ModelTensor) -> torch.Tensor:
    """The whole tensor on this rank (an FSDP2 shard is all-gathered: every rank must call this)."""
    tensor = entry.tensor.detach()
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def materialize_meta_buffers(model: nn.Module, device: torch.device | str) -> None:
    """Give non-persistent buffers left on meta (rotary inverse frequencies) real values on `device`.

    They are not in checkpoints; modules derive them (`_apply` re-derives after `to_empty`, or
    `reset_buffers()` recomputes them), so only the modules holding them are moved.
    """
    for module in model.modules():
        if any(buf is not None and buf.device.type == "meta" for buf in module._buffers.values()):
            if any(p is not None and p.device.type == "meta" for p in module._parameters.values()):
                continue  # a parameter the checkpoint did not fill; reported as missing, not hidden here
            module.to_empty(device=device, recurse=False)
            if hasattr(module, "reset_buffers"):
                module.reset_buffers()
