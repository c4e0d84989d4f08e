"""Apply the spec's `parallel:` policies to a built model, from outside the model (as torchtitan does).

Order (ARCHITECTURE.md): float8 matmuls (`parallel.precision`, text layers; assembler.parallel.float8)
→ activation checkpointing → `torch.compile` per block → FSDP2 `fully_shard` per decoder layer,
per vision block, embeddings, root. A "block" is one text decoder
layer (type `linear` or `full`) or one vision block (type `vision`).

Checkpointing is full (a block keeps its input and recomputes its forward) or op-level (torch's
selective checkpointing: the outputs of KEPT_OP_PREFIXES ops are kept, the rest recomputed); mode
`auto` is planned before this runs (assembler.parallel.activation_checkpoint_probe) and arrives here as `selective`.

`activation_checkpointing.placement: around_compile` swaps the first two: an eager non-reentrant
checkpoint around the compiled forward. Its saved-tensor hooks drop whatever the compiled graph
saves, so exactly the block's inputs stay alive by construction, whatever AOTAutograd's
partitioner would choose inside a traced checkpoint. On the CPU the two keep the same tensors
(tests/test_activation_checkpoint_placement.py); on an H200 the fast backend's full-AC peak grows by ~1 MiB
per token where the inputs alone are 0.16, and BENCHMARKS.md lists what this option is to rule in
or out.

Checkpointing and compile replace a block's `forward` with a wrapper on the instance rather than
wrapping the module in another one, so parameter names stay the HF checkpoint's
(`model.language_model.layers.3.self_attn.q_proj.weight`, no `_checkpoint_wrapped_module.` or
`_orig_mod.`). FSDP's hooks then sit on the block's `__call__`, outside the compiled region.

fp32-kept parameters (`parallel.fsdp.fp32_params`, fnmatch globs over parameter names) stay
fp32, masters and compute, whatever the model was built in (`train.dtype`). FSDP2 casts every
parameter of a unit alike and needs one master dtype per unit, so under FSDP they are left out of
sharding (`fully_shard(..., ignored_params=...)`): whole on every rank, never cast, no FSDP hooks.
Their gradients are summed over ranks by `reduce_replicated_gradients` (called by the training step),
the optimizer steps them like any other parameter. They are a few KiB per layer for Qwen3.5 (A_log,
the gated norm's weight), so replicating them costs nothing, and the blocks holding them compile
into one graph (`fullgraph` as the spec says): nested fp32 units, the earlier design, put FSDP2's
Dynamo-disabled hooks inside the block and broke its graph, 28% of the packed 4B step on an H200.

The lm_head weight is read by the loss op, never called as a module, so no unit's hooks would
gather it: it stays in the root unit (with the final norm, and with the embeddings when tied).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from assembler.model.family import family_of_model
from assembler.parallel.float8 import apply_float8, multiplies_in_float8
from assembler.spec import Spec
from assembler.spec.sections import CheckpointingSettings, FsdpSettings
from blocks.constants import DTYPES


# Op-level checkpointing keeps the outputs of these ops (by name prefix: matmuls, float8 ones
# included, attention and the fast backend's kernels) and recomputes everything else (norms, activations, gates, casts) in
# backward, as torchtitan's selective AC does: most of the time is in the first, most of the
# activation bytes of a block in the second.
KEPT_OP_PREFIXES = (
    "aten.mm.", "aten.addmm.", "aten.bmm.", "aten.baddbmm.", "aten._scaled_mm.", "aten._scaled_dot_product_", "aten._flash_attention_forward.",
    "aten._efficient_attention_forward.", "aten._cudnn_attention_forward.", "flash_attn.", "torch_attn.", "assemble.",
)


@dataclass
class BlockPolicy:
    """What parallelize applied to one block (kept on the block as `parallel_policy`, for logs and tests)."""

    name: str  # module path, e.g. "model.language_model.layers.3"
    block_type: str  # linear | full | vision
    checkpointed: bool = False  # fully (its input kept, its forward recomputed)
    op_level: bool = False  # op-level selective: matmul and kernel outputs kept, the rest recomputed
    compiled: bool = False
    fullgraph: bool = False
    compile_mode: str | None = None  # torch.compile mode; None = its default
    float8: bool = False  # its linear layers multiply in float8 (parallel.precision.matmul)
    sharded: bool = False  # an FSDP2 unit
    replicated: list[str] = field(default_factory=list)  # its parameters FSDP2 leaves whole (fp32-kept), relative names


def parallelize(model: nn.Module, spec: Spec, *, mesh: "dist.device_mesh.DeviceMesh | None" = None) -> nn.Module:
    """Apply activation checkpointing, compile and FSDP2 from `spec.parallel` to `model`, in place.

    FSDP applies when `mesh` is given, or when a process group is initialised (a 1-D mesh over all
    ranks is made); a single process without one gets checkpointing and compile only (world size 1
    under torchrun is sharded like any other). Returns `model`.
    """
    policy = spec.settings.parallel
    fsdp = policy.fsdp
    if mesh is None and dist.is_available() and dist.is_initialized():
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (dist.get_world_size(),))

    fp32_names = keep_fp32_params(model, fsdp.fp32_params)

    blocks = list(iter_blocks(model))
    ac_spec = policy.activation_checkpointing
    if ac_spec.mode == "auto":
        raise ValueError("parallel.activation_checkpointing.mode auto: plan it first (assembler.parallel.activation_checkpoint_probe.resolve_auto_checkpointing)")
    checkpointed = blocks_to_checkpoint(blocks, ac_spec)
    op_level = blocks_to_checkpoint(blocks, ac_spec, key="op_level")
    checkpoint_around_compile = ac_spec.placement == "around_compile"
    for name, block, block_type in blocks:
        record = BlockPolicy(name=name, block_type=block_type)
        if multiplies_in_float8(spec, block_type):  # the module swap comes before any wrapper
            record.float8 = bool(apply_float8(block))
        record.checkpointed, record.op_level = name in checkpointed, name in op_level
        # Op-level checkpointing chooses by aten op, so it must see the ops: always inside compile.
        if record.op_level or (record.checkpointed and not checkpoint_around_compile):
            apply_activation_checkpointing(block, op_level=record.op_level)
        compile_policy = policy.compile_of(block_type)
        if compile_policy.enabled:
            apply_compile(block, fullgraph=compile_policy.fullgraph, mode=compile_policy.mode)
            record.compiled, record.fullgraph, record.compile_mode = True, compile_policy.fullgraph, compile_policy.mode
        if record.checkpointed and not record.op_level and checkpoint_around_compile:
            apply_activation_checkpointing(block)
        block.parallel_policy = record

    if mesh is not None:
        apply_fsdp(model, blocks, fsdp, mesh=mesh, replicated=fp32_names)
    return model


def iter_blocks(model: nn.Module):  # noqa: ANN201 (generator of (name, module, type))
    """(module path, block, block type) of every repeated block of a built model (its family's
    `blocks`: text decoder layers, vision blocks), in forward order."""
    for ref in family_of_model(model).blocks(model):
        yield ref.path, ref.module, ref.block_type


def blocks_to_checkpoint(blocks: list[tuple[str, nn.Module, str]], ac_spec: dict | CheckpointingSettings, *, key: str = "layers") -> set[str]:
    """Names of the blocks `activation_checkpointing` selects for full checkpointing (`key`
    "layers") or op-level checkpointing (`key` "op_level"): none, every block (mode `full`, full
    checkpointing only), or in mode `selective` the listed block types (`linear`, `full`,
    `vision`) and text layer indices."""
    settings = CheckpointingSettings.of(ac_spec)  # missing settings: the schema's defaults
    mode = settings.mode
    if mode == "none":
        return set()
    if mode == "full":
        return {name for name, _, _ in blocks} if key == "layers" else set()
    if mode != "selective":
        raise ValueError(f"parallel.activation_checkpointing.mode: unknown mode {mode!r}; known: none, full, selective, auto")
    if not (settings.layers or settings.op_level):
        raise ValueError("parallel.activation_checkpointing: mode `selective` needs `layers` and/or `op_level` "
                         "(block types and/or text layer indices)")
    chosen = getattr(settings, key) or []
    types = {item for item in chosen if isinstance(item, str)}
    indices = {item for item in chosen if isinstance(item, int)}
    known = {block_type for _, _, block_type in blocks}
    unknown = sorted(types - known)
    if unknown:
        raise ValueError(f"parallel.activation_checkpointing.{key}: unknown block type(s) {unknown}; known: {', '.join(sorted(known))}")
    text_names = [name for name, _, block_type in blocks if block_type != "vision"]
    out_of_range = sorted(i for i in indices if i >= len(text_names))
    if out_of_range:
        raise ValueError(
            f"parallel.activation_checkpointing.{key}: text layer index(es) {out_of_range} out of range; "
            f"the text tower has {len(text_names)} layers (0..{len(text_names) - 1})"
        )
    selected = {name for name, _, block_type in blocks if block_type in types}
    return selected | {text_names[i] for i in indices}


def apply_activation_checkpointing(block: nn.Module, *, op_level: bool = False) -> None:
    """Recompute the block's forward in backward (non-reentrant checkpoint), keeping only its
    inputs; `op_level`: keep the outputs of the KEPT_OP_PREFIXES ops too, recompute only the rest."""
    forward = block.forward
    extra = {"context_fn": _keep_expensive_op_outputs} if op_level else {}

    def checkpointed_forward(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return checkpoint(forward, *args, use_reentrant=False, **extra, **kwargs)

    block.forward = checkpointed_forward


def _keep_expensive_op_outputs():  # noqa: ANN202 (a pair of context managers)
    return create_selective_checkpoint_contexts(_op_level_policy)


def _op_level_policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:  # noqa: ANN001, ANN002, ANN003
    return CheckpointPolicy.MUST_SAVE if str(func).startswith(KEPT_OP_PREFIXES) else CheckpointPolicy.PREFER_RECOMPUTE


def apply_compile(block: nn.Module, *, fullgraph: bool, mode: str | None = None) -> None:
    """Compile the block's (possibly checkpointed) forward; the module's hooks stay outside the graph."""
    block.forward = torch.compile(block.forward, fullgraph=fullgraph, mode=mode)


def keep_fp32_params(model: nn.Module, patterns: list[str]) -> set[str]:
    """Cast the parameters whose names match `patterns` (fnmatch) to fp32, in place; returns their names."""
    names = {name for name, _ in model.named_parameters() if any(fnmatch.fnmatchcase(name, p) for p in patterns)}
    for name, param in model.named_parameters():
        if name in names and param.dtype != torch.float32:
            param.data = param.data.float()
    return names


def apply_fsdp(
    model: nn.Module,
    blocks: list[tuple[str, nn.Module, str]],
    fsdp_spec: dict,
    *,
    mesh: "dist.device_mesh.DeviceMesh",
    replicated: set[str] = frozenset(),
) -> None:
    """fully_shard per block, the untied embeddings, then the root; the parameters named in
    `replicated` (the fp32-kept ones) are left out of every unit (see the module docstring)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    fsdp = FsdpSettings.of(fsdp_spec)
    mixed = MixedPrecisionPolicy(param_dtype=DTYPES[fsdp.param_dtype], reduce_dtype=DTYPES[fsdp.reduce_dtype])
    common = dict(
        mesh=mesh,
        mp_policy=mixed,
        reshard_after_forward=fsdp.reshard_after_forward,
        offload_policy=CPUOffloadPolicy() if fsdp.cpu_offload else OffloadPolicy(),
        ignored_params={param for name, param in model.named_parameters() if name in replicated},
    )
    for name, block, _ in blocks:
        fully_shard(block, **common)
        block.parallel_policy.sharded = True
        block.parallel_policy.replicated = sorted(n for n, _ in block.named_parameters() if f"{name}.{n}" in replicated)

    if not getattr(model, "tie_word_embeddings", False):
        fully_shard(model.get_input_embeddings(), **common)
    # The root unit is never resharded after forward. FSDP2 re-gathers a resharded unit in backward
    # from a hook on its forward's output tensors, and the model returns a dataclass, which FSDP2
    # does not look into: resharded, the root's parameters (the patch merger's, the final norm's)
    # were freed storage by the time backward read them ("setStorage: ... storage of size 0" in
    # linear_fc2's backward on CUDA). FSDP2 keeps a root unsharded by default too, unless
    # reshard_after_forward is passed, as `common` does for every other unit.
    fully_shard(model, **{**common, "reshard_after_forward": False})


def replicated_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters FSDP2 leaves whole on every rank (the fp32-kept ones, see the
    module docstring): every parameter of a sharded model that is not a DTensor. Empty when the
    model is not sharded."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    if not isinstance(model, FSDPModule):
        return []
    return [p for p in model.parameters() if p.requires_grad and not isinstance(p, DTensor)]


def reduce_replicated_gradients(model: nn.Module) -> None:
    """Sum the gradients of the replicated parameters over ranks (FSDP2 reduces only what it
    shards), as `sum_gradients_across_ranks` makes it sum the rest: one all-reduce of their
    concatenation per optimizer step, after the last micro-batch's backward. A no-op on one rank."""
    grads = [p.grad for p in replicated_parameters(model) if p.grad is not None]
    if not grads or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    for grad, reduced in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(reduced.view_as(grad))


def sum_gradients_across_ranks(model: nn.Module) -> None:
    """Make every FSDP2 unit of `model` sum gradients over ranks instead of averaging them.

    For a loss already divided by the global target count (all micro-batches, all ranks; see
    assembler.train.loop), each rank's gradient is its share of the global one and the shares must
    be added: FSDP2's default average would shrink the gradient by the world size and make it
    depend on it. Plain SUM collectives (no pre/post division, no NCCL PreMulSum) work on NCCL and
    gloo alike. A no-op for a model that is not sharded.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
