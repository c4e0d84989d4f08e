"""Synthetic training rows for benchmarks, shaped like `assemble train`'s: packed documents (or one
document per row), optionally with images, collated by the data pipeline's own `collate_row`.

Random token ids and random pixels: throughput and memory do not depend on the values, and no
dataset or tokenizer is needed on a bare GPU machine.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from assembler.data.chat_template import IGNORE_INDEX, EncodedSample
from assembler.data.packing import collate_row
from assembler.model.family import family_of_model
from assembler.spec.sections import TextSettings
from assembler.train.metrics import attention_flops_per_token, matmul_weight_flops_per_token
from blocks.vision_grid import position_grid_side

TEXT_TOKEN_RANGE = 150_000  # ordinary token ids, clear of Qwen3.5's special tokens


@dataclass(frozen=True)
class ImageSpec:
    """`count` images of `height` x `width` pixels in every step (e.g. 4x448x448)."""

    count: int
    height: int
    width: int

    @staticmethod
    def parse(text: str) -> "ImageSpec":
        match = re.fullmatch(r"(\d+)x(\d+)x(\d+)", text.strip())
        if not match:
            raise ValueError(f"--images {text!r}: expected COUNTxHEIGHTxWIDTH, e.g. 4x448x448")
        return ImageSpec(*(int(group) for group in match.groups()))


# Document lengths of a packed row: log-normal around this share of the row (an 8k row then holds
# about a dozen documents, from a few dozen tokens to a few thousand, as chat/caption data does).
MEDIAN_DOCUMENT_SHARE = 1 / 16
DOCUMENT_LENGTH_SIGMA = 0.8
MIN_DOCUMENT_TOKENS = 32
# packed / one-document: synthetic rows of each --seq length; data: the rows `assemble train` would
# draw from the spec's own data (its tokens_per_step; the same shape as the run, to compare with it).
SYNTHETIC_LAYOUTS = ("packed", "one-document")
LAYOUTS = (*SYNTHETIC_LAYOUTS, "data")


def synthetic_row(
    model_spec: dict, seq_len: int, *, layout: str = "packed", images: ImageSpec | None = None, seed: int = 0
) -> tuple[dict, int]:
    """One collator row of `seq_len` tokens, made by the data pipeline's own `collate_row` from
    synthetic documents: (the model's keyword arguments on the host, image patches in the row).

    layout `packed`: documents of log-normal lengths (median MEDIAN_DOCUMENT_SHARE of the row)
    until the row is full, the tail one padding document, as `assemble train` packs; `one-document`:
    one document filling the row. `images` go one each into the first documents (spread over the
    row for `one-document`). Random tokens and pixels: speed and memory do not depend on values.
    """
    if layout not in SYNTHETIC_LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(SYNTHETIC_LAYOUTS)}")
    generator = torch.Generator().manual_seed(seed)
    image_tokens, grid = _image_shape(model_spec, images) if images else (0, None)
    count = images.count if images else 0
    if layout == "one-document":
        lengths = [seq_len]
    else:
        lengths = _packed_lengths(seq_len, generator, min_length=image_tokens + 2 + MIN_DOCUMENT_TOKENS, at_least=count)
    samples = []
    for index, length in enumerate(lengths):
        images_here = (count if layout == "one-document" else int(index < count))
        samples.append(_synthetic_sample(model_spec, length, images_here, image_tokens, grid, generator))
    vision = model_spec.get("vision")
    merge = vision["spatial_merge_size"] if vision else 1
    tokens = model_spec["tokens"]
    row = collate_row(
        samples, budget=seq_len, pad_token_id=tokens["eos"], image_token_id=tokens["image"],
        spatial_merge_size=merge, image_processor=_RandomPixels(model_spec, generator) if count else None,
        num_grid_per_side=position_grid_side(vision["num_position_embeddings"]) if vision else None,
    )
    patches = 0 if row["pixel_values"] is None else row["pixel_values"].shape[0]
    return row, patches


def _packed_lengths(seq_len: int, generator: torch.Generator, *, min_length: int, at_least: int) -> list[int]:
    """Log-normal document lengths that fill at most `seq_len` tokens (the rest is padding)."""
    median = max(seq_len * MEDIAN_DOCUMENT_SHARE, min_length)
    lengths: list[int] = []
    while True:
        draw = torch.empty(()).log_normal_(math.log(median), DOCUMENT_LENGTH_SIGMA, generator=generator)
        length = max(int(draw), min_length)
        if sum(lengths) + length > seq_len:
            break
        lengths.append(length)
    if len(lengths) < max(at_least, 1):
        raise ValueError(f"{at_least} images need more than {seq_len} tokens per row")
    return lengths


def _image_shape(model_spec: dict, images: ImageSpec) -> tuple[int, tuple[int, int, int]]:
    """(`<|image_pad|>` tokens of one image, its (t, h, w) patch grid); one frame, as a still image."""
    vision = model_spec.get("vision")
    if not vision:
        raise ValueError("--images: this spec has no model.vision")
    patch, merge = vision["patch_size"], vision["spatial_merge_size"]
    if images.height % (patch * merge) or images.width % (patch * merge):
        raise ValueError(f"--images: {images.height}x{images.width} must be multiples of patch x merge = {patch * merge}")
    grid = (1, images.height // patch, images.width // patch)
    return grid[1] * grid[2] // merge**2, grid


def _synthetic_sample(model_spec: dict, length: int, n_images: int, image_tokens: int, grid, generator) -> EncodedSample:
    """A document of `length` tokens with `n_images` images evenly spaced in random text; labels are
    the next tokens (image tokens and the last one excluded), as the chat template makes them."""
    tokens = model_spec["tokens"]
    text_tokens = length - n_images * (image_tokens + 2)
    if text_tokens < n_images + 1:
        raise ValueError(f"{n_images} images of {image_tokens} tokens do not fit a document of {length} tokens")
    gap = text_tokens // (n_images + 1)
    ids: list[int] = []
    for _ in range(n_images):
        ids += torch.randint(0, TEXT_TOKEN_RANGE, (gap,), generator=generator).tolist()
        ids += [tokens["vision_start"], *[tokens["image"]] * image_tokens, tokens["vision_end"]]
    ids += torch.randint(0, TEXT_TOKEN_RANGE, (length - len(ids),), generator=generator).tolist()
    image_ids = (tokens["image"], tokens["vision_start"])
    labels = [nxt if nxt not in image_ids and cur != tokens["image"] else IGNORE_INDEX for cur, nxt in zip(ids, ids[1:])]
    images = [Path(f"synthetic-{t}x{h}x{w}") for t, h, w in [grid] * n_images] if n_images else []
    return EncodedSample(ids, labels + [IGNORE_INDEX], images, [grid] * n_images, "synthetic")


class _RandomPixels:
    """Stands in for the image processor: random pixel patches for the grids named in the paths."""

    def __init__(self, model_spec: dict, generator: torch.Generator):
        vision = model_spec["vision"]
        self.channels = vision["in_channels"] * vision["temporal_patch_size"] * vision["patch_size"] ** 2
        self.generator = generator

    def __call__(self, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        grids = torch.tensor([[int(x) for x in path.name.removeprefix("synthetic-").split("x")] for path in paths])
        patches = int(grids.prod(dim=1).sum())
        return torch.randn(patches, self.channels, generator=self.generator), grids


def training_flops(
    text_matmul_flops: float, text_spec: TextSettings | dict, seq_len: int, *, vision: tuple[float, dict, int, int] | None = None
) -> float:
    """Flops of one training step, torchtitan's convention (ARCHITECTURE.md, Measuring): per token
    the text matmuls' (`text_matmul_flops`: 6·N, a frozen weight 4, see
    `matmul_weight_flops_per_token`) + what the text layers' blocks count themselves
    (`attention_flops_per_token`: softmax attention's 12·H·d_head·S; delta-rule kernel flops are
    not counted).

    vision: (the vision tower's matmul flops per patch, vision spec, patches per step, patches per
    image) adds those + 12·depth·hidden·S_image per patch, the same convention for the vision tower.
    """
    per_token = text_matmul_flops + attention_flops_per_token(text_spec, seq_len)
    flops = per_token * seq_len
    if vision is not None:
        vision_matmul_flops, vision_spec, patches, patches_per_image = vision
        flops += (vision_matmul_flops + 12 * vision_spec["depth"] * vision_spec["hidden_size"] * patches_per_image) * patches
    return float(flops)


def text_matmul_flops(model: torch.nn.Module) -> int:
    """The text side's matmul flops per token: every matmul weight's (the tied LM head once) minus
    the vision tower's (the family names its towers; a text-only model has none)."""
    vision = family_of_model(model).towers(model).get("vision")
    return matmul_weight_flops_per_token(model) - (matmul_weight_flops_per_token(vision) if vision is not None else 0)
