"""Float8 matmuls for the text tower (`parallel.precision.matmul: float8_rowwise`), through torchao.

torchao's float8 training swaps a block's `nn.Linear` modules for its `Float8Linear` (a subclass:
the same `weight`, so checkpoint and HF names do not change). Its forward and backward matmuls
cast both operands to float8 (e4m3) with one scale per row, computed from the row's absolute
maximum on the fly, and run `torch._scaled_mm`; the result, the weights, their gradients and the
optimizer states keep their dtypes. We use torchao rather than our own kernels: its recipes are
the ones torchtitan trains with, they compose with FSDP2 and torch.compile (which fuses the
scaling into the neighbouring kernels), and `rowwise` is its recipe that keeps the loss closest
to bf16.

Which layers: the linear layers of the text decoder layers, where each dimension is a multiple of
16 (`_scaled_mm`'s tiling). Not the vision tower (its row counts follow the images, and its
matmuls are a few percent of the step), not the LM head (read by the loss op, not called as a
module), not LoRA adapters (refused by the spec's validation: rank-r matmuls gain nothing).

Applied by `parallelize` before activation checkpointing, compile and FSDP2, as torchtitan orders it.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from assembler.spec import Spec
from assembler.spec.errors import UserError
from assembler.spec.validation import VISION_BLOCK_TYPE

FLOAT8_ROWWISE = "float8_rowwise"
FLOAT8_DESCRIPTION = ("float8 with rowwise scales (torchao) in the text decoder layers' linear layers whose dimensions "
                      "are multiples of 16; every other matmul in parallel.fsdp.param_dtype")
MIN_CAPABILITY = (8, 9)  # float8 tensor cores: Ada and Hopper onwards
INSTALL = "pip install torchao"


def float8_unavailable(device_type: str) -> str | None:
    """Why `float8_rowwise` cannot run on `device_type` here (a sentence naming the fix), or None."""
    if importlib.util.find_spec("torchao") is None:
        return f"parallel.precision.matmul {FLOAT8_ROWWISE} needs torchao, which is not installed: {INSTALL}"
    if device_type == "cuda":
        capability = torch.cuda.get_device_capability()
        if capability < MIN_CAPABILITY:
            return (f"parallel.precision.matmul {FLOAT8_ROWWISE} needs a GPU of compute capability "
                    f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (this one: {capability[0]}.{capability[1]}); "
                    "set parallel.precision.matmul: param_dtype")
    return None


def check_precision_can_run(spec: Spec, device_type: str) -> None:
    """Refuse up front (UserError, exit 2) float8 matmuls this machine cannot run, rather than
    failing inside the first step; a no-op for `param_dtype`."""
    if spec.settings.parallel.precision.matmul == FLOAT8_ROWWISE:
        reason = float8_unavailable(device_type)
        if reason is not None:
            raise UserError(f"{spec.source or spec.name}: {reason}")


def multiplies_in_float8(spec: Spec, block_type: str) -> bool:
    """Whether `spec` asks float8 matmuls of a block of `block_type` (the text layers, not vision)."""
    return spec.settings.parallel.precision.matmul == FLOAT8_ROWWISE and block_type != VISION_BLOCK_TYPE


def has_float8_shape(module: nn.Module, _name: str = "") -> bool:
    """A linear layer `_scaled_mm` can take: both dimensions multiples of 16."""
    return isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0


def apply_float8(block: nn.Module) -> list[str]:
    """Swap `block`'s float8-shaped linear layers for torchao's rowwise Float8Linear, in place;
    returns their names relative to `block` (empty: nothing had the shape)."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    names = [name for name, module in block.named_modules() if name and has_float8_shape(module)]
    if names:
        convert_to_float8_training(block, config=Float8LinearConfig.from_recipe_name("rowwise"),
                                   module_filter_fn=has_float8_shape)
    return names
