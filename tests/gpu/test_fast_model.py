"""The whole model on the `fast` backend against the `hf` backend (bf16, same weights): the loss
within 1e-2 relative; all gradients together within GRAD_RTOL relative error and each parameter's
within PARAM_GRAD_RTOL (cosine similarity alone would pass a gradient of the wrong scale); on the
tiny spec and on a 2-layer model of Qwen3.5-4B's shapes, eager and compiled (fullgraph,
checkpointed), text only and with images through the vision tower; packed documents stay apart on
the fast path.

The bounds: bf16 rounds every stored activation to 2^-9 relative, and the two backends round at
different places (FlashAttention and fla's chunked delta rule keep fp32 accumulators inside one
kernel; the hf backend rounds between torch ops), so their gradients differ by bf16 noise
compounded over the layers and the backward pass, about 1e-2. A wrong scale or a wrong term is
far larger. The smallest gradients (norm weights of layers the loss barely reaches) are the
noisiest relative to their size, hence a looser per-parameter bound.
"""

import dataclasses
from pathlib import Path

import pytest
import torch

from assembler import build_model, load_spec
from assembler.parallel.parallelize import iter_blocks, keep_fp32_params, parallelize
from blocks.packing import PackingContext

pytestmark = pytest.mark.gpu
pytest.importorskip("fla", reason="the fast delta rule and conv1d need flash-linear-attention (fla)")

CUDA = "cuda"
GRAD_RTOL = 5e-2        # ‖g_fast − g_hf‖ / ‖g_hf‖ over all parameters' gradients together
PARAM_GRAD_RTOL = 1e-1  # the same for each parameter alone
SPECS = Path(__file__).resolve().parents[2] / "specs"
TWO_LAYER_4B = ["model.text.num_hidden_layers=2", "model.text.layers=[linear, full]"]
FP32_KEPT = ["*.linear_attn.A_log", "*.linear_attn.norm.weight"]


def _pair(spec_file, overrides, dtype=torch.bfloat16, vision=False):
    """(hf model, fast model) with identical weights; text only unless `vision`."""
    models = []
    for backend in ("hf", "fast"):
        spec = load_spec(SPECS / spec_file, [*overrides, f"ops.backend={backend}"])
        if not vision:
            spec = dataclasses.replace(spec, model={**spec.model, "vision": None})
        model = build_model(spec, device=CUDA, dtype=dtype, seed=0)
        keep_fp32_params(model, FP32_KEPT)
        models.append((spec, model))
    models[1][1].load_state_dict(models[0][1].state_dict())
    return models


def _batch(vocab, lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(lengths)
    ids = torch.randint(0, min(vocab, 150_000), (1, tokens), generator=generator)
    labels = torch.randint(0, min(vocab, 150_000), (1, tokens), generator=generator)
    packing = PackingContext.from_document_lengths([lengths])
    return {"input_ids": ids.to(CUDA), "shift_labels": labels.to(CUDA), "packing": packing.to(CUDA)}


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}


def _assert_close(fast, hf):
    (loss, grads), (ref_loss, ref_grads) = fast, hf
    assert abs(loss - ref_loss) / abs(ref_loss) < 1e-2, (loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    cosines = {n: torch.nn.functional.cosine_similarity(g.flatten(), ref_grads[n].flatten(), dim=0).item() for n, g in grads.items()}
    worst = sorted(cosines.items(), key=lambda item: item[1])[:5]
    assert worst[0][1] > 0.99, worst
    difference = torch.cat([(grads[n] - ref_grads[n]).flatten() for n in ref_grads])
    reference = torch.cat([g.flatten() for g in ref_grads.values()])
    total_rel = (difference.norm() / reference.norm()).item()
    assert total_rel < GRAD_RTOL, total_rel
    relative = {n: ((g - ref_grads[n]).norm() / ref_grads[n].norm().clamp_min(1e-30)).item() for n, g in grads.items()}
    worst_rel = sorted(relative.items(), key=lambda item: -item[1])[:5]
    assert worst_rel[0][1] < PARAM_GRAD_RTOL, worst_rel


@pytest.mark.parametrize("spec_file, overrides, lengths", [
    ("qwen3_5_tiny.yaml", [], [300, 212]),
    ("qwen3_5_4b.yaml", TWO_LAYER_4B, [600, 424]),
])
def test_fast_backend_matches_hf_backend(spec_file, overrides, lengths):
    (hf_spec, hf_model), (_, fast_model) = _pair(spec_file, overrides)
    batch = _batch(hf_spec.model["text"]["vocab_size"], lengths)
    _assert_close(_loss_and_grads(fast_model, batch), _loss_and_grads(hf_model, batch))


def test_fast_backend_matches_hf_backend_with_images():
    """The vision tower's fast path (varlen FlashAttention over the images' patches) and the text
    tower fed its merged embeddings: three packed documents, two of them with an image."""
    from assembler.bench.workload import ImageSpec, synthetic_row
    from assembler.train.step import to_device

    (hf_spec, hf_model), (_, fast_model) = _pair("qwen3_5_tiny.yaml", [], vision=True)
    row, patches = synthetic_row(hf_spec.model, 512, layout="packed", images=ImageSpec(2, 64, 96), seed=0)
    assert patches > 0 and row["packing"].num_documents >= 3
    batch = to_device(row, torch.device(CUDA))
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    fast, hf = _loss_and_grads(fast_model, batch), _loss_and_grads(hf_model, batch)
    assert any(name.startswith("model.visual.") for name in hf[1]), "the vision tower got no gradient"
    _assert_close(fast, hf)


@pytest.mark.parametrize("placement", ["inside_compile", "around_compile"])
def test_compiled_checkpointed_fast_backend_matches_hf_backend(placement):
    compile_both = [
        f"parallel.activation_checkpointing={{mode: full, placement: {placement}}}",
        "parallel.compile.linear={enabled: true, fullgraph: true}",
        "parallel.compile.full={enabled: true, fullgraph: true}",
    ]
    (hf_spec, hf_model), (fast_spec, fast_model) = _pair("qwen3_5_4b.yaml", TWO_LAYER_4B + compile_both)
    parallelize(fast_model, fast_spec)
    assert all(block.parallel_policy.fullgraph for _, block, _ in iter_blocks(fast_model))
    batch = _batch(hf_spec.model["text"]["vocab_size"], [600, 424])
    torch._dynamo.utils.counters.clear()
    fast = _loss_and_grads(fast_model, batch)
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    _assert_close(fast, _loss_and_grads(hf_model, batch))


def test_packed_documents_stay_apart_on_the_fast_path():
    """The second document's logits do not depend on what the first one holds (bf16: FlashAttention
    takes no fp32, so both sides run the same kernels on the same layout and only the first
    document's tokens differ)."""
    (_, _), (spec, model) = _pair("qwen3_5_tiny.yaml", [])
    vocab = spec.model["text"]["vocab_size"]
    first, other_first, second = (_batch(vocab, [n], seed=s)["input_ids"] for n, s in ((150, 1), (150, 3), (106, 2)))
    two_documents = PackingContext.from_document_lengths([[150, 106]]).to(CUDA)
    one_document = PackingContext.from_document_lengths([[256]]).to(CUDA)
    with torch.no_grad():
        packed = model(torch.cat([first, second], dim=1), packing=two_documents).logits[:, 150:]
        packed_other = model(torch.cat([other_first, second], dim=1), packing=two_documents).logits[:, 150:]
        leaky = model(torch.cat([first, second], dim=1), packing=one_document).logits[:, 150:]
        leaky_other = model(torch.cat([other_first, second], dim=1), packing=one_document).logits[:, 150:]
    torch.testing.assert_close(packed, packed_other, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(leaky, leaky_other, rtol=1e-2, atol=1e-2)  # the check can fail
