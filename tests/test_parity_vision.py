"""The vision tower + patch merger reproduce transformers' Qwen3_5VisionModel bitwise (CPU, hf ops).

Oracle: `Qwen3_5VisionModel` with eager attention and random weights. For bf16 the oracle is what
`from_pretrained(dtype=torch.bfloat16)` gives — bf16 parameters with the rotary inv_freq kept fp32 —
so the reference is saved and reloaded that way, while ours is built in fp32, loaded, and cast with
`.to(torch.bfloat16)`: matching it proves our inv_freq survives the cast in fp32.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5VisionConfig
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel

from blocks.ops import resolve_ops
from blocks.patch_merger import PatchMerger
from blocks.registry import get_block
from blocks.vision_tower import VisionTower

TINY = dict(
    depth=2,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    in_channels=3,
    patch_size=4,
    temporal_patch_size=2,
    spatial_merge_size=2,
    num_position_embeddings=64,  # an 8 x 8 table, resampled to grids both smaller and larger
)
OUT_HIDDEN = 64
PATCH_DIM = TINY["in_channels"] * TINY["temporal_patch_size"] * TINY["patch_size"] ** 2
TWO_IMAGES = torch.tensor([[1, 4, 6], [1, 8, 4]])  # different grids: 24 and 32 patches
IMAGE_AND_VIDEO = torch.tensor([[1, 6, 2], [2, 4, 4]])  # a 2-frame video: one attention segment per frame


def _our_tower() -> VisionTower:
    merger = PatchMerger(hidden_size=TINY["hidden_size"], spatial_merge_size=TINY["spatial_merge_size"], out_hidden_size=OUT_HIDDEN)
    return VisionTower(**TINY, rope_theta=10000.0, merger=merger, ops=resolve_ops("hf"))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[torch.dtype, tuple[Qwen3_5VisionModel, VisionTower]]:
    """{dtype: (reference, ours)} with identical weights."""
    config = Qwen3_5VisionConfig(**TINY, out_hidden_size=OUT_HIDDEN, hidden_act="gelu_pytorch_tanh")
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    reference = Qwen3_5VisionModel(config).eval()
    with torch.no_grad():  # HF's init leaves LayerNorms at (1, 0); randomise them so they are exercised
        for name, p in reference.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("qwen3_5_vision")
    reference.save_pretrained(folder)
    reference_bf16 = Qwen3_5VisionModel.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="eager").eval()
    assert reference_bf16.rotary_pos_emb.inv_freq.dtype == torch.float32  # the oracle rule this file relies on

    ours = _our_tower()
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16)
    return {torch.float32: (reference, ours), torch.bfloat16: (reference_bf16, ours_bf16)}


@pytest.mark.parametrize("grid_thw", [TWO_IMAGES, IMAGE_AND_VIDEO], ids=["two_images", "image_and_video"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_forward_and_pixel_grad_are_bitwise_equal(models, dtype, grid_thw):
    reference, ours = models[dtype]
    torch.manual_seed(1)
    pixels = torch.randn(int(grid_thw.prod(-1).sum()), PATCH_DIM)
    ref_pixels, our_pixels = pixels.clone().requires_grad_(), pixels.clone().requires_grad_()

    expected = reference(ref_pixels, grid_thw).pooler_output
    got = ours(our_pixels, grid_thw)
    assert got.dtype == dtype and got.shape == expected.shape == (pixels.shape[0] // 4, OUT_HIDDEN)
    assert torch.equal(got, expected), f"max |diff| {(got.float() - expected.float()).abs().max()}"

    upstream = torch.randn_like(expected)
    expected.backward(upstream)
    got.backward(upstream)
    assert ref_pixels.grad.abs().sum() > 0
    assert torch.equal(our_pixels.grad, ref_pixels.grad), f"max |diff| {(our_pixels.grad - ref_pixels.grad).abs().max()}"


def test_parameter_grads_are_bitwise_equal_fp32(models):
    reference, ours = models[torch.float32]
    torch.manual_seed(2)
    pixels = torch.randn(int(TWO_IMAGES.prod(-1).sum()), PATCH_DIM)
    reference.zero_grad()
    ours.zero_grad()
    upstream = torch.randn(pixels.shape[0] // 4, OUT_HIDDEN)
    reference(pixels, TWO_IMAGES).pooler_output.backward(upstream)
    ours(pixels, TWO_IMAGES).backward(upstream)
    ref_grads = {n: p.grad for n, p in reference.named_parameters()}
    for name, p in ours.named_parameters():
        assert torch.equal(p.grad, ref_grads[name]), name


def test_bf16_cast_keeps_rotary_inv_freq_fp32(models):
    reference_bf16, ours_bf16 = models[torch.bfloat16]
    assert ours_bf16.patch_embed.proj.weight.dtype == torch.bfloat16
    assert ours_bf16.rotary_pos_emb.inv_freq.dtype == torch.float32
    assert torch.equal(ours_bf16.rotary_pos_emb.inv_freq, reference_bf16.rotary_pos_emb.inv_freq)


def test_meta_build_then_to_empty_recomputes_inv_freq(models):
    _, ours = models[torch.float32]
    with torch.device("meta"):
        on_meta = _our_tower()
    materialised = on_meta.to_empty(device="cpu")  # to_empty leaves buffers uninitialised; ours re-derives
    assert torch.equal(materialised.rotary_pos_emb.inv_freq, ours.rotary_pos_emb.inv_freq)


def test_state_dict_names_are_hf_names(models):
    reference, ours = models[torch.float32]
    assert list(ours.state_dict()) == list(reference.state_dict())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_images_do_not_attend_to_each_other(models, dtype):
    _, ours = models[dtype]
    first = int(TWO_IMAGES[0].prod())  # patches of image 0; its merged tokens are the first first // 4
    torch.manual_seed(3)
    pixels = torch.randn(int(TWO_IMAGES.prod(-1).sum()), PATCH_DIM)
    perturbed = pixels.clone()
    perturbed[:first] += torch.randn(first, PATCH_DIM)
    with torch.no_grad():
        before, after = ours(pixels, TWO_IMAGES), ours(perturbed, TWO_IMAGES)
    assert not torch.equal(before[: first // 4], after[: first // 4])  # the perturbation does reach image 0
    assert torch.equal(before[first // 4 :], after[first // 4 :])


def test_registered_under_the_spec_names():
    assert get_block("vision", "vision_tower") is VisionTower
    assert get_block("merger", "patch_merger") is PatchMerger


def test_mismatched_grid_is_a_readable_error(models):
    _, ours = models[torch.float32]
    with pytest.raises(ValueError, match="describes 56"):
        ours(torch.randn(10, PATCH_DIM), TWO_IMAGES)
    with pytest.raises(ValueError, match="multiples of spatial_merge_size"):
        ours(torch.randn(15, PATCH_DIM), torch.tensor([[1, 3, 5]]))
