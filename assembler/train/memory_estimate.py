"""A lower bound of one training step's memory per rank, from the spec alone (a meta-device build:
nothing allocated), so `assemble train` can refuse a run that cannot fit before it starts.

    weights     every parameter in its dtype (`train.dtype`; LoRA adapters in `train.adapters.dtype`),
                sharded over the ranks under FSDP2
    gradients   one per trained parameter, in its dtype, sharded alike
    optimizer   AdamW's two states per trained parameter, in its dtype, sharded alike
    activations one micro-batch of `train.tokens_per_step` tokens: the LM head's logits in the compute
                dtype and fp32 (none with the `fast` cross-entropy, which chunks them), and what each
                text layer keeps for backward: its input under activation checkpointing (full,
                selective or auto, counted at the least), about 4·hidden + 2·intermediate values per
                token without

The activations leave out the vision tower, each layer's own temporaries and the allocator's slack,
so a step needs more than this; a run this says cannot fit surely does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from assembler.spec import Spec
from blocks.constants import DTYPES

GIB = 2**30


@dataclass(frozen=True)
class StepMemory:
    """Bytes per rank (see the module docstring)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int  # the LM head's part of `activations`

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        return (f"{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, gradients {self.gradients / GIB:.1f}, "
                f"AdamW states {self.optimizer / GIB:.1f}, activations {self.activations / GIB:.1f} GiB)")

    def remedies(self, spec: Spec, device_type: str) -> str:
        """What would shrink the step, for this spec: each way that saves more than a GiB."""
        train, ways = spec.train, []
        if train["adapters"] is None and self.gradients + self.optimizer > GIB:
            ways.append("train LoRA adapters on the frozen model instead of every weight (`assemble import-hf --lora`, "
                        "or train.adapters in the spec)")
        if train["dtype"] == "float32" and self.weights + self.gradients + self.optimizer > GIB:
            ways.append("keep the weights, gradients and AdamW states in bf16: -o train.dtype=bfloat16 (half of theirs)")
        if self.activations > GIB:
            ways.append(f"lower train.tokens_per_step (now {train['tokens_per_step']}; the logits alone take "
                        f"{self.logits / GIB:.1f} GiB)")
        if spec.settings.parallel.activation_checkpointing.mode == "none" and self.activations - self.logits > GIB:
            ways.append("checkpoint the activations: -o parallel.activation_checkpointing.mode=full")
        ways.append(("train on a GPU, or " if device_type == "cpu" else "")
                    + "shard the weights, gradients and AdamW states over more GPUs: torchrun --nproc-per-node N $(which assemble) train ...")
        return "; ".join(ways)


def estimate_step_memory(spec: Spec, device: torch.device, world_size: int = 1) -> StepMemory:
    """A lower bound of one step's memory on each of `world_size` ranks of `device`'s type."""
    from assembler.model.build import build_model
    from assembler.train.trained_parameters import choose_trained_parameters

    sharded = device.type == "cuda" or world_size > 1  # FSDP2 over the world (assembler.distributed)
    model = build_model(spec, device="meta")
    choose_trained_parameters(model, spec, device="meta", initialize_adapters=False)
    train = spec.settings.train
    base_bytes = DTYPES[train.dtype].itemsize
    adapter_bytes = DTYPES[train.adapters.dtype].itemsize if train.adapters else base_bytes
    weights = trained = 0
    for name, parameter in model.named_parameters():
        size = parameter.numel() * (adapter_bytes if ".lora_" in name else base_bytes)
        weights += size
        trained += size if parameter.requires_grad else 0
    shards = world_size if sharded else 1
    logits, layers = _activation_bytes(spec, sharded)
    return StepMemory(weights=weights // shards, gradients=trained // shards, optimizer=2 * trained // shards,
                      activations=logits + layers, logits=logits)


def _activation_bytes(spec: Spec, sharded: bool) -> tuple[int, int]:
    """(the LM head's logits, the text layers' kept activations) of one micro-batch, in bytes."""
    from assembler.model.build import compute_dtype

    text, ops = spec.settings.model.text, spec.settings.ops
    tokens = spec.settings.train.tokens_per_step
    compute = DTYPES[compute_dtype(spec, sharded=sharded)].itemsize
    cross_entropy = ops.overrides.get("cross_entropy", ops.backend)
    logits = 0 if cross_entropy == "fast" else tokens * text.vocab_size * (compute + 4)
    per_token = 0
    for layer_type in text.layers:
        if spec.settings.parallel.activation_checkpointing.mode == "none":
            intermediate = text.layer_types[layer_type]["mlp"].get("intermediate_size", 0)  # the MLP block's own setting
            per_token += 4 * text.hidden_size + 2 * intermediate
        else:
            per_token += text.hidden_size
    return logits, tokens * per_token * compute


def available_memory(device: torch.device) -> tuple[int, str]:
    """(bytes free for this run, what holds them): the GPU's free memory, or the host's available
    memory (MemAvailable: free plus reclaimable caches) on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"the GPU ({torch.cuda.get_device_name(device)})"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "this host"
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this host"
