"""Measure what `activation_checkpointing.mode: auto` plans with, on the run's own first batch.

A probe model (the spec with one block of each type, built on the run's device in the compute
dtype) runs the first batch forward once; hooks capture each block type's real inputs. Each
block type is then measured eagerly, per choice of assembler.parallel.activation_checkpoint_plan:
- `none` keeps every tensor its backward saves: counted by a saved-tensors hook (unique storages);
- `op_level` keeps the outputs of the ops parallelize.KEPT_OP_PREFIXES names, plus its input:
  counted by a dispatch mode over the forward;
- `full` keeps its input only.
The recompute a choice adds is the forward time of what it recomputes: the whole forward for
`full`, the forward less the kept ops' time for `op_level` (timed per op by the same dispatch
mode, synchronising the device around each), nothing for `none`. The bytes that do not depend on
the plan are the model state, counted exactly from the parameters (fp32 or bf16 masters,
gradients and AdamW's two states, sharded over the ranks, plus the gathered compute-dtype copy of
the largest block and of the next one, which FSDP2 prefetches), and the largest transient a
block's backward allocates beyond what it saved, measured.

What the probe does not see: what Inductor's partitioner saves inside a compiled checkpoint
(eager counts stand in for it) and the loss head's transient (chunked on the `fast` backend). The
first step's measured peak is logged next to the prediction, so the gap is visible on every run.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from assembler.parallel.activation_checkpoint_plan import BlockCost, MemoryModel, PlanDoesNotFit, describe, plan_checkpointing, plan_section
from assembler.parallel.float8 import apply_float8, multiplies_in_float8
from assembler.parallel.parallelize import KEPT_OP_PREFIXES, iter_blocks, keep_fp32_params
from assembler.spec import Spec
from assembler.spec.errors import UserError
from blocks.constants import DTYPES

FRAGMENTATION_MARGIN = 0.08  # the share of the card left to the caching allocator's fragmentation
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, each the size of the master parameter


def resolve_auto_checkpointing(spec: Spec, first_batch: dict[str, Any], device: torch.device, *, world_size: int = 1
                               ) -> tuple[Spec, str | None]:
    """`mode: auto` planned for this device and batch: (the spec with the plan written in as a
    `selective` section, one log line). Other modes: (spec, None) unchanged. On the CPU there is no
    device memory to plan for: no checkpointing (said in the log line)."""
    ac = spec.settings.parallel.activation_checkpointing
    if ac.mode != "auto":
        return spec, None
    placement = ac.placement
    if device.type != "cuda":
        return _with_section(spec, {"mode": "none", "placement": placement}), \
            "activation checkpointing (auto, cpu): no device memory to plan for; no checkpointing"
    total = torch.cuda.get_device_properties(device).total_memory
    budget = ac.memory_budget_gib * 2**30 if ac.memory_budget_gib is not None else total * (1 - FRAGMENTATION_MARGIN)
    model = measure_memory_model(spec, first_batch, device, world_size=world_size)
    try:
        plan = plan_checkpointing(model, budget)
    except PlanDoesNotFit as error:
        raise UserError(
            f"parallel.activation_checkpointing (auto): {error}. Lower train.tokens_per_step, train on more GPUs, or "
            "keep the masters in bf16 (-o train.dtype=bfloat16)"
        ) from None
    section = plan_section(plan, list(spec.settings.model.text.layers), placement=placement)
    line = f"activation checkpointing (auto, budget {budget / 2**30:.1f} GiB): {describe(plan)}"
    return _with_section(spec, section), line


def measure_memory_model(spec: Spec, first_batch: dict[str, Any], device: torch.device, *, world_size: int = 1,
                         clock: Callable[[], float] | None = None) -> MemoryModel:
    """The MemoryModel of `spec` at `first_batch`'s shape on `device` (see the module docstring)."""
    from assembler.model.build import build_model, compute_dtype
    from assembler.train.step import to_device

    clock = clock or _device_clock(device)
    dtype = DTYPES[compute_dtype(spec, sharded=device.type == "cuda")]  # every CUDA run is sharded
    fp32_patterns = spec.settings.parallel.fsdp.fp32_params
    probe = build_model(_one_block_per_type(spec), device=device, dtype=dtype, seed=0)
    keep_fp32_params(probe, fp32_patterns)
    for _, block, block_type in iter_blocks(probe):  # measured as the run computes
        if multiplies_in_float8(spec, block_type):
            apply_float8(block)
    inputs = _capture_block_inputs(probe, to_device(first_batch, device), dtype)
    counts = _block_counts(spec)
    blocks, transient = {}, 0.0
    for name, block, block_type in iter_blocks(probe):
        if block_type not in inputs:
            continue  # e.g. no images in the first batch: the vision blocks did not run
        cost, block_transient = _measure_block(block, *inputs[block_type], count=counts[block_type], clock=clock)
        blocks[block_type], transient = cost, max(transient, block_transient)
    full_model = build_model(spec, device="meta")
    state, largest = _model_state_bytes(spec, full_model, world_size=world_size, compute=dtype)
    return MemoryModel(fixed_bytes=state + 2 * largest + transient, blocks=blocks)


def _one_block_per_type(spec: Spec) -> Spec:
    layers = list(dict.fromkeys(spec.settings.model.text.layers))  # one of each type, in first-seen order
    probe = spec.replaced("model.text.layers", layers).replaced("model.text.num_hidden_layers", len(layers))
    return probe.replaced("model.vision.depth", 1) if spec.settings.model.vision else probe


def _block_counts(spec: Spec) -> dict[str, int]:
    counts: dict[str, int] = {}
    for layer_type in spec.settings.model.text.layers:
        counts[layer_type] = counts.get(layer_type, 0) + 1
    if spec.settings.model.vision:
        counts["vision"] = spec.settings.model.vision["depth"]  # the vision block's own setting
    return counts


def _capture_block_inputs(probe: nn.Module, batch: dict[str, Any], dtype: torch.dtype) -> dict[str, tuple[tuple, dict]]:
    """(args, kwargs) each block type was called with, from one no-grad forward of `probe`."""
    captured: dict[str, tuple[tuple, dict]] = {}
    handles = []
    for _, block, block_type in iter_blocks(probe):
        def hook(module, args, kwargs, block_type=block_type):  # noqa: ANN001, ANN202
            captured.setdefault(block_type, (args, kwargs))
        handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            for key in ("pixel_values", "pixel_values_videos"):
                if batch.get(key) is not None:
                    batch = {**batch, key: batch[key].to(dtype)}
            probe(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _measure_block(block: nn.Module, args: tuple, kwargs: dict, *, count: int, clock: Callable[[], float]) -> tuple[BlockCost, float]:
    """(the block type's BlockCost, the largest transient of its backward beyond what it saved)."""
    hidden = args[0].detach().requires_grad_(True)
    rest = args[1:]
    input_bytes = float(hidden.numel() * hidden.element_size())

    saved: dict[int, int] = {}
    # Weights a backward saves are the parameters themselves, and the input is counted once below.
    not_activations = {p.untyped_storage().data_ptr() for p in block.parameters()} | {hidden.untyped_storage().data_ptr()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in not_activations:
            saved.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    meter = _KeptOps()
    start = clock()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), meter:
        out = block(hidden, *rest, **kwargs)
    forward_s = clock() - start
    before = _start_peak_window(hidden.device)
    out.backward(torch.ones_like(out))
    transient = max(_peak(hidden.device) - before, 0.0)
    cost = BlockCost(
        count=count,
        saved_bytes={"none": input_bytes + sum(saved.values()), "op_level": input_bytes + meter.kept_bytes, "full": input_bytes},
        recompute_s={"none": 0.0, "op_level": max(forward_s - meter.kept_s, 0.0), "full": forward_s},
    )
    return cost, transient


class _KeptOps(TorchDispatchMode):
    """Sums the output bytes and the time of the ops op-level checkpointing keeps."""

    def __init__(self) -> None:
        super().__init__()
        self.kept_bytes, self.kept_s = 0.0, 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if not str(func).startswith(KEPT_OP_PREFIXES):
            return func(*args, **(kwargs or {}))
        _synchronize(args)
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        _synchronize(args)
        self.kept_s += time.perf_counter() - start
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.kept_bytes += tensor.numel() * tensor.element_size()
        return out


def _model_state_bytes(spec: Spec, model: nn.Module, *, world_size: int, compute: torch.dtype) -> tuple[float, float]:
    """(bytes of master parameters, gradients and AdamW states on one rank, bytes of the largest
    block's parameters gathered in the `compute` dtype)."""
    master = DTYPES[spec.settings.train.dtype].itemsize
    parameters = sum(p.numel() for p in model.parameters())
    state = parameters * master * (2 + ADAMW_STATES) / world_size
    largest = max(sum(p.numel() for p in block.parameters()) for _, block, _ in iter_blocks(model)) * compute.itemsize
    return float(state), float(largest)


def _with_section(spec: Spec, section: dict) -> Spec:
    return spec.replaced("parallel.activation_checkpointing", section)


def _device_clock(device: torch.device) -> Callable[[], float]:
    if device.type != "cuda":
        return time.perf_counter

    def clock() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock


def _synchronize(args: tuple) -> None:
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.is_cuda:
            torch.cuda.synchronize(arg.device)
            return


def _start_peak_window(device: torch.device) -> float:
    """Reset the device's peak-memory counter and return what is allocated now (CPU: 0)."""
    if device.type != "cuda":
        return 0.0
    torch.cuda.reset_peak_memory_stats(device)
    return float(torch.cuda.memory_allocated(device))


def _peak(device: torch.device) -> float:
    return float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0.0
