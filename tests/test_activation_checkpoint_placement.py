"""`activation_checkpointing.placement: around_compile`: an eager checkpoint around each compiled
block keeps exactly the block's input for the backward, and the loss and gradients are those of
the same compiled model without checkpointing."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from assembler import build_model, load_spec
from assembler.parallel.parallelize import iter_blocks, parallelize

TINY = Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml"
# The hf ops branch on data (document bounds), so compiled blocks keep graph breaks here.
COMPILE_TEXT = ["parallel.compile.linear={enabled: true, fullgraph: false}", "parallel.compile.full={enabled: true, fullgraph: false}"]


def _run(model, ids, labels):
    """(bytes autograd saved inside the decoder layers, as the outermost hooks see them; loss; gradients)."""
    inside_layer, saved = [False], []

    def pack(tensor):
        if inside_layer[0]:
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    handles = []
    for layer in model.model.language_model.layers:
        handles.append(layer.register_forward_pre_hook(lambda *_: inside_layer.__setitem__(0, True)))
        handles.append(layer.register_forward_hook(lambda *_: inside_layer.__setitem__(0, False)))
    model.zero_grad()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = model(ids, labels=labels).loss
    finally:
        for handle in handles:
            handle.remove()
    loss.backward()
    return sum(saved), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("sharded", [False, True], ids=["one process", "fsdp world size 1"])
def test_checkpoint_around_compiled_blocks_keeps_only_inputs_and_the_same_gradients(sharded, request):
    """With FSDP2, its hooks sit on the block's __call__ and the checkpoint inside its forward: the
    backward's recompute runs while FSDP holds the block's gathered parameters."""
    sharding = []
    if sharded:
        request.getfixturevalue("single_rank_group")
        sharding = ["parallel.fsdp.param_dtype=float32"]
    spec = load_spec(TINY, [*COMPILE_TEXT, *sharding, "parallel.activation_checkpointing={mode: full, placement: around_compile}"])
    spec = dataclasses.replace(spec, model={**spec.model, "vision": None})
    reference_spec = dataclasses.replace(spec, parallel={**spec.parallel, "activation_checkpointing": {"mode": "none"}})
    model = build_model(spec, seed=0)
    reference = copy.deepcopy(model)
    parallelize(model, spec)
    parallelize(reference, reference_spec)
    policies = [block.parallel_policy for _, block, _ in iter_blocks(model)]
    assert all(policy.checkpointed and policy.compiled and policy.sharded == sharded for policy in policies)

    ids = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(1))
    saved, loss, grads = _run(model, ids, labels)
    reference_saved, reference_loss, reference_grads = _run(reference, ids, labels)

    layer_input_bytes = ids.numel() * spec.model["text"]["hidden_size"] * 4  # [B, T, H] fp32
    assert saved == len(model.model.language_model.layers) * layer_input_bytes
    assert reference_saved > 0  # the check can fail: the same layers, compiled without checkpointing, keep activations
    torch.testing.assert_close(loss, reference_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == reference_grads.keys()
    for name, grad in grads.items():
        reference_grad = reference_grads[name]
        if hasattr(grad, "full_tensor"):  # sharded; the fp32-kept parameters are replicated plain tensors
            grad, reference_grad = grad.full_tensor(), reference_grad.full_tensor()
        torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-6, msg=name)


def _zeros_like_fake(fake):  # noqa: ANN001, ANN202
    """A CPU stand-in for an fla kernel: the op's fake (shape) implementation, filled with zeros."""

    def kernel(*args):  # noqa: ANN002, ANN202
        outputs = fake(*args)
        return tuple(t.zero_() for t in outputs) if isinstance(outputs, tuple) else outputs.zero_()

    return kernel


@pytest.fixture
def fla_kernels_on_cpu():
    """The fast backend's custom ops with CPU kernels (zeros of the right shapes), for this test only."""
    import blocks.ops.fast_conv1d as conv1d
    import blocks.ops.fast_delta_rule as delta_rule

    with torch.library._scoped_library("assemble", "IMPL") as library:
        library.impl("gated_delta_rule_fwd", _zeros_like_fake(delta_rule._gated_delta_rule_fwd_fake), "CPU")
        library.impl("causal_conv1d_fwd", _zeros_like_fake(conv1d._causal_conv1d_fwd_fake), "CPU")
        yield


def test_checkpoint_inside_compiled_fast_block_keeps_only_inputs(fla_kernels_on_cpu):
    """The default placement with the fast ops' structure (custom ops inside autograd.Functions,
    SDPA, fullgraph): AOTAutograd's partitioner recomputes everything and keeps only each block's
    inputs, as the eager checkpoint around the compiled block does. (Parameters, which the
    compiled graph also saves, cost nothing and are not counted.) Forward only: the stand-in
    kernels have no backward."""
    spec = load_spec(TINY, [
        "ops.backend=fast", "parallel.compile.linear={enabled: true, fullgraph: true}",
        "parallel.compile.full={enabled: true, fullgraph: true}", "parallel.activation_checkpointing.mode=full",
    ])
    spec = dataclasses.replace(spec, model={**spec.model, "vision": None})
    model = build_model(spec, seed=0, dtype=torch.bfloat16)
    parallelize(model, spec)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ids = torch.randint(0, 1000, (1, 256), generator=torch.Generator().manual_seed(0))
    tokens = ids.shape[1]

    saved, current = {}, [None]

    def pack(tensor):  # noqa: ANN001, ANN202
        if current[0] is not None and tensor.untyped_storage().data_ptr() not in parameters and tokens in tensor.shape:
            saved[current[0]] = saved.get(current[0], 0) + tensor.numel() * tensor.element_size()
        return tensor

    layers = model.model.language_model.layers
    for index, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda *_, index=index: current.__setitem__(0, index))
        layer.register_forward_hook(lambda *_: current.__setitem__(0, None))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(ids, labels=ids)
    # What each layer reads: its hidden-state input [1, T, H] bf16, and in full-attention layers the
    # rotary cos and sin [1, T, rotary_dim] bf16 (from the text tower's context).
    text = spec.model["text"]
    head_dim = text["layer_types"]["full"]["mixer"]["head_dim"]
    rotary_bytes = 2 * tokens * int(head_dim * text["rope"]["partial_rotary_factor"]) * 2
    hidden_bytes = tokens * text["hidden_size"] * 2
    expected = {i: hidden_bytes + (rotary_bytes if layer.layer_type == "full" else 0) for i, layer in enumerate(layers)}
    assert saved == expected
