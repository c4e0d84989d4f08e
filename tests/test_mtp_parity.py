"""The `model.mtp` head, loaded from the released layout (15 `mtp.*` tensors in an HF folder), against
an independent reference written from the published architecture (tests/mtp_reference.py) on top
of transformers' Qwen3_5ForConditionalGeneration: MTP logits, MTP loss and every gradient that loss
sends into the head and the tower are torch.equal on the `hf` backend, in fp32 and bf16.

The input is text, an image and text, so the MTP layer's rotary positions are mRoPE positions whose
three axes differ. The reference takes h_t and the embeddings from what transformers' text model
received and returned (a hook), the positions too; its targets are the labels shifted by two,
written here. The last position of the row has no token t+1 and predicts nothing: the reference
feeds it a zero embedding, as `model.mtp` is documented to, so the head runs over the same T
positions and the gradient sums add the same terms in the same order.
"""

import pytest
import torch
from torch.nn import functional as F
from transformers import Qwen3_5ForConditionalGeneration

from assembler import build_model, load_hf_checkpoint, spec_from_hf_config
from assembler.spec.loading import load_spec_from_dict
from tests.hf_checkpoint_fixtures import TOKENS, make_source_folder, sample_inputs
from tests.mtp_reference import RELEASED_MTP_NAMES, add_released_mtp_head, reference_head_from


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = make_source_folder(tmp_path_factory.mktemp("released"))
    return path, add_released_mtp_head(path)


def spec_with_mtp(folder, **mtp):
    base = spec_from_hf_config(folder)
    return load_spec_from_dict({"name": "with_mtp", "model": {**base.model, "mtp": mtp}})


def _labels(input_ids):
    labels = input_ids.clone()
    labels[input_ids == TOKENS["image_token_id"]] = -100
    labels[:, :2] = -100
    return labels


def _reference(path, tensors, dtype, inputs, labels):
    """(main logits, MTP logits [1, T, V], MTP loss, reference model, reference head) with the loss backpropagated."""
    model = Qwen3_5ForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    seen = {}

    def capture(_module, _args, kwargs):
        seen.update(inputs_embeds=kwargs["inputs_embeds"], position_ids=kwargs["position_ids"])

    text_model = model.model.language_model
    handle = text_model.register_forward_pre_hook(capture, with_kwargs=True)
    mm_token_type_ids = (inputs["input_ids"] == TOKENS["image_token_id"]).int()
    hidden = model.model(**inputs, mm_token_type_ids=mm_token_type_ids, use_cache=False).last_hidden_state  # final-normed
    handle.remove()
    embeds, positions = seen["inputs_embeds"], seen["position_ids"]
    text_positions, mrope_positions = (positions[0], positions[1:]) if positions.shape[0] == 4 else (None, positions)
    assert not torch.equal(mrope_positions[1], mrope_positions[2])  # the image gives the axes different positions

    head = reference_head_from(tensors, model.config.text_config, dtype)
    rotary = text_model.rotary_emb(embeds, mrope_positions)
    next_embeds = torch.cat([embeds[:, 1:], torch.zeros_like(embeds[:, :1])], dim=1)  # token t+1's; none after the last
    mtp_hidden = head(next_embeds, hidden, rotary, text_positions)
    mtp_logits = model.lm_head(mtp_hidden)
    targets = F.pad(labels[:, 2:], (0, 2), value=-100)  # position t predicts token t+2; the last two have none
    loss = F.cross_entropy(mtp_logits.float().reshape(-1, mtp_logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    loss.backward()
    return model.lm_head(hidden), mtp_logits, loss, model, head


def _ours(path, dtype, inputs, labels):
    spec = spec_with_mtp(path, loss_weight=0.5)
    model = build_model(spec, dtype=dtype, ops=None)
    load_hf_checkpoint(model, path, spec)
    out = model(**inputs, labels=labels, return_logits=True)
    out.mtp_loss.backward()
    return out, model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_mtp_logits_loss_and_gradients_are_bitwise_the_reference(folder, dtype):
    path, tensors = folder
    inputs = {k: (v.to(dtype) if k == "pixel_values" else v) for k, v in sample_inputs().items()}
    labels = _labels(inputs["input_ids"])
    logits, mtp_logits, mtp_loss, reference, head = _reference(path, tensors, dtype, inputs, labels)
    got, ours = _ours(path, dtype, inputs, labels)

    assert sorted(n for n, _ in ours.named_parameters() if n.startswith("mtp.")) == RELEASED_MTP_NAMES
    assert torch.equal(got.logits, logits)  # the head leaves the main model as it was
    assert got.mtp_logits.shape == (1, inputs["input_ids"].shape[1], 256)
    assert torch.equal(got.mtp_logits, mtp_logits)
    assert torch.equal(got.mtp_loss, mtp_loss)
    assert got.mtp_loss_weight == 0.5 and torch.equal(got.training_loss, got.loss + 0.5 * got.mtp_loss)

    expected = {f"mtp.{n}": p.grad for n, p in head.named_parameters()}
    expected |= {n: p.grad for n, p in reference.named_parameters()}
    checked = 0
    for name, parameter in ours.named_parameters():
        assert parameter.grad is not None and expected[name] is not None, name
        assert torch.equal(parameter.grad, expected[name]), f"gradient of {name} differs"
        checked += 1
    assert checked == len(expected)  # the head's, the text tower's and the vision tower's (images feed the MTP input)


def test_a_swapped_concatenation_fails_the_comparison(folder):
    """A control: the comparison above tells the released order [embedding | hidden] from the other."""
    path, tensors = folder
    inputs, dtype = sample_inputs(), torch.float32
    labels = _labels(inputs["input_ids"])
    _, mtp_logits, _, _, _ = _reference(path, tensors, dtype, inputs, labels)
    spec = spec_with_mtp(path)
    ours = build_model(spec, dtype=dtype)
    load_hf_checkpoint(ours, path, spec)
    with torch.no_grad():
        weight = ours.mtp.fc.weight  # [H, 2H]: read as [hidden | embedding] instead
        weight.copy_(torch.cat(weight.chunk(2, dim=1)[::-1], dim=1))
        swapped = ours(**inputs, return_logits=True).mtp_logits
    assert not torch.allclose(swapped, mtp_logits, atol=1e-3)
