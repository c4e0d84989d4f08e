"""Synthetic training batches for benchmarks: one sequence per step (text), or images + text (VLM).

Random token ids and random pixels: throughput and memory do not depend on the values, and no
dataset or tokenizer is needed on a bare GPU machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from assembler.train.metrics import matmul_parameter_count
from blocks.packing import PackingContext
from blocks.position_ids import mrope_position_ids

IGNORE_INDEX = -100
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


def text_batch(seq_len: int, device: torch.device | str, seed: int = 0) -> dict:
    """One document of `seq_len` random tokens: the model's keyword arguments."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, TEXT_TOKEN_RANGE, (1, seq_len), generator=generator)
    labels = torch.randint(0, TEXT_TOKEN_RANGE, (1, seq_len), generator=generator)
    packing = PackingContext.from_document_lengths([[seq_len]])
    return {"input_ids": input_ids.to(device), "shift_labels": labels.to(device), "packing": packing.to(device)}


def vlm_batch(model_spec: dict, seq_len: int, images: ImageSpec, device: torch.device | str, seed: int = 0) -> tuple[dict, int]:
    """One document of `seq_len` tokens holding `images` (evenly spaced, text between): (model kwargs, patches).

    Each image is (height/p) x (width/p) patches (one frame: Qwen-VL repeats a still image over the
    temporal patch) and (height/p/m) x (width/p/m) tokens, p the patch size and m the merge size.
    """
    vision, tokens = model_spec["vision"], model_spec["tokens"]
    patch, merge = vision["patch_size"], vision["spatial_merge_size"]
    if images.height % (patch * merge) or images.width % (patch * merge):
        raise ValueError(f"--images: {images.height}x{images.width} must be multiples of patch x merge = {patch * merge}")
    grid_h, grid_w = images.height // patch, images.width // patch
    image_tokens = grid_h * grid_w // merge**2
    text_tokens = seq_len - images.count * (image_tokens + 2)  # + vision_start, vision_end
    if text_tokens < images.count + 1:
        raise ValueError(f"--images {images.count}x{images.height}x{images.width} needs more than --seq {seq_len} tokens")

    generator = torch.Generator().manual_seed(seed)
    gap = text_tokens // (images.count + 1)
    pieces = []
    for _ in range(images.count):
        pieces.append(torch.randint(0, TEXT_TOKEN_RANGE, (gap,), generator=generator))
        pieces.append(torch.tensor([tokens["vision_start"], *[tokens["image"]] * image_tokens, tokens["vision_end"]]))
    pieces.append(torch.randint(0, TEXT_TOKEN_RANGE, (text_tokens - gap * images.count,), generator=generator))
    input_ids = torch.cat(pieces)
    grid_thw = torch.tensor([[1, grid_h, grid_w]] * images.count)
    positions = mrope_position_ids(input_ids, grid_thw, image_token_id=tokens["image"], spatial_merge_size=merge)
    labels = torch.cat([input_ids[1:], torch.tensor([IGNORE_INDEX])])
    labels[(input_ids == tokens["image"]) | (labels == tokens["image"])] = IGNORE_INDEX

    patches = images.count * grid_h * grid_w
    channels = vision["in_channels"] * vision["temporal_patch_size"] * patch * patch
    pixel_values = torch.randn(patches, channels, generator=generator)
    packing = PackingContext.from_document_lengths([[seq_len]], position_ids=positions[:, None, :])
    batch = {
        "input_ids": input_ids[None].to(device),
        "shift_labels": labels[None].to(device),
        "packing": packing.to(device),
        "pixel_values": pixel_values.to(device, torch.bfloat16),
        "image_grid_thw": grid_thw.to(device),
    }
    return batch, patches


def training_flops(
    n_text_matmul: int, text_spec: dict, seq_len: int, *, vision: tuple[int, dict, int, int] | None = None
) -> float:
    """Flops of one training step, torchtitan's convention (ARCHITECTURE.md, Measuring):
    (6·N + 12·L_full·H·d_head·S) per token; delta-rule kernel flops are not counted.

    vision: (N_vision, vision spec, patches per step, patches per image) adds
    6·N_vision + 12·depth·hidden·S_image per patch, the same convention for the vision tower.
    """
    full = text_spec["mixers"].get("full") or {}
    n_full = text_spec["layers"].count("full")
    per_token = 6 * n_text_matmul + 12 * n_full * full.get("num_heads", 0) * full.get("head_dim", 0) * seq_len
    flops = per_token * seq_len
    if vision is not None:
        n_vision, vision_spec, patches, patches_per_image = vision
        flops += (6 * n_vision + 12 * vision_spec["depth"] * vision_spec["hidden_size"] * patches_per_image) * patches
    return float(flops)


def text_matmul_parameters(model: torch.nn.Module) -> int:
    """N of the text side: every matmul weight (the tied LM head once) minus the vision tower's."""
    visual = getattr(getattr(model, "model", None), "visual", None)
    return matmul_parameter_count(model) - (matmul_parameter_count(visual) if visual is not None else 0)
