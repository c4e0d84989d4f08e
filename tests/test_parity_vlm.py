"""The whole assembled VLM against transformers' Qwen3_5ForConditionalGeneration (eager), bitwise.

Text with two images of different sizes; logits, loss and every parameter's gradient must be
torch.equal. The oracle is the model as a user gets it: written by save_pretrained and loaded by
from_pretrained(dtype=..., attn_implementation="eager"), which keeps the rotary inverse frequencies
in fp32 under bf16 (tests/oracle.py says what to do when transformers moves).
"""

import pytest
import torch
from transformers import Qwen3_5ForConditionalGeneration

from assembler import build_model, spec_from_hf_config
from tests.oracle import randomize_parameters_, tiny_config

TOKENS = dict(image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253)
GRIDS = [[1, 4, 6], [1, 6, 4]]  # two images, (t, h, w) patch grids of different shapes


def _oracle(tmp_path, dtype):
    config = tiny_config(text={"eos_token_id": 254}, **TOKENS)
    reference = randomize_parameters_(Qwen3_5ForConditionalGeneration(config), seed=1, std=0.05)
    reference.save_pretrained(tmp_path / "reference")
    loaded = Qwen3_5ForConditionalGeneration.from_pretrained(
        tmp_path / "reference", dtype=dtype, attn_implementation="eager"
    )
    return config, loaded


def _inputs(merge: int = 2):
    generator = torch.Generator().manual_seed(0)
    pieces = [torch.randint(0, 240, (7,), generator=generator)]
    for t, h, w in GRIDS:
        pad = torch.full((t * h * w // merge**2,), TOKENS["image_token_id"])
        pieces += [torch.tensor([TOKENS["vision_start_token_id"]]), pad, torch.tensor([TOKENS["vision_end_token_id"]])]
        pieces.append(torch.randint(0, 240, (5,), generator=generator))
    input_ids = torch.cat(pieces).unsqueeze(0)
    patch_dim = 3 * 2 * 16 * 16
    pixel_values = torch.randn(sum(t * h * w for t, h, w in GRIDS), patch_dim, generator=generator)
    labels = input_ids.clone()
    labels[input_ids == TOKENS["image_token_id"]] = -100
    labels[:, :3] = -100
    return input_ids, pixel_values, torch.tensor(GRIDS), labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_vlm_logits_loss_and_every_gradient_are_bitwise(tmp_path, dtype):
    config, reference = _oracle(tmp_path, dtype)
    spec = spec_from_hf_config(config.to_dict())
    ours = build_model(spec, dtype=dtype)
    ours.load_state_dict(reference.state_dict(), strict=True)

    input_ids, pixel_values, grid_thw, labels = _inputs()
    mm_token_type_ids = (input_ids == TOKENS["image_token_id"]).int()
    expected = reference(
        input_ids=input_ids,
        pixel_values=pixel_values.to(dtype),
        image_grid_thw=grid_thw,
        mm_token_type_ids=mm_token_type_ids,
        labels=labels,
        use_cache=False,  # a training forward: with its default cache the reference convolves a zero-padded window
    )
    expected.loss.backward()
    got = ours(input_ids=input_ids, pixel_values=pixel_values.to(dtype), image_grid_thw=grid_thw, labels=labels, return_logits=True)
    got.loss.backward()

    assert torch.equal(got.logits, expected.logits)
    assert torch.equal(got.loss, expected.loss)
    reference_grads = {name: p.grad for name, p in reference.named_parameters()}
    checked = 0
    for name, parameter in ours.named_parameters():
        assert parameter.grad is not None, name
        assert torch.equal(parameter.grad, reference_grads[name]), f"gradient of {name} differs"
        checked += 1
    assert checked == len(reference_grads)


def test_the_images_matter(tmp_path):
    """A control: the comparison above would catch a model that ignored its images."""
    config, reference = _oracle(tmp_path, torch.float32)
    ours = build_model(spec_from_hf_config(config.to_dict()))
    ours.load_state_dict(reference.state_dict(), strict=True)
    input_ids, pixel_values, grid_thw, _ = _inputs()
    with torch.no_grad():
        a = ours(input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=grid_thw).logits
        b = ours(input_ids=input_ids, pixel_values=pixel_values.flip(0), image_grid_thw=grid_thw).logits
    assert not torch.equal(a, b)
