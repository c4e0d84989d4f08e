"""The Qwen3.5 vision tower (HF `model.visual`): image patches -> merged tokens for the text tower.

    patch_embed (Conv3d over t x p x p)  +  pos_embed (learned square table, bilinearly resampled
    to each image's grid)  ->  depth x VisionBlock (2-D axial rope, attention per frame)  ->  merger

Reproduces transformers' `Qwen3_5VisionModel` bitwise with the `hf` ops; parameter names are HF's.
The input patches come in the order the Qwen image processor emits (see `blocks.vision_grid`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from blocks.ops import OpTable
from blocks.registry import register
from blocks.settings import SettingProblem, divisors
from blocks.vision_block import VisionBlock
from blocks.vision_grid import VisionLayout, position_grid_side
from blocks.vision_rope import VisionRotaryEmbedding


class VisionPatchEmbed(nn.Module):
    """Flattened patches [N, C*tp*p*p] -> [N, hidden] by a Conv3d whose kernel is the patch."""

    def __init__(self, *, in_channels: int, patch_size: int, temporal_patch_size: int, hidden_size: int):
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.embed_dim = hidden_size
        kernel_size = [temporal_patch_size, patch_size, patch_size]
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=kernel_size, stride=kernel_size, bias=True)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = pixel_values.view(-1, self.in_channels, self.temporal_patch_size, self.patch_size, self.patch_size)
        return self.proj(patches.to(dtype=self.proj.weight.dtype)).view(-1, self.embed_dim)


PROFILER_RANGE = "vision tower"  # what a profile calls the tower's forward (assemble bench's host gaps read it)


@register("vision", "vision_tower")
class VisionTower(nn.Module):
    """pixel_values [N, C*tp*p*p], grid_thw [I, 3] -> merged features [N / merge**2, out_hidden]."""

    # Its spec section's settings (assembled into the spec schema; `block` is added there).
    settings_schema = {
        "description": ("A ViT over 3D (temporal x spatial) patches with a learned position grid and 2D axial "
                        "RoPE, whose patch merger feeds the text tower."),
        "properties": {
            "depth": {
                "type": "integer",
                "description": "Number of transformer blocks.",
                "minimum": 1,
                "maximum": 1024
            },
            "hidden_size": {
                "type": "integer",
                "description": "Width of the vision tower; a multiple of num_heads.",
                "minimum": 1,
                "maximum": 65536
            },
            "num_heads": {
                "type": "integer",
                "description": "Number of attention heads.",
                "minimum": 1,
                "maximum": 1024
            },
            "intermediate_size": {
                "type": "integer",
                "description": "Hidden width of the vision MLP.",
                "minimum": 1,
                "maximum": 1048576
            },
            "in_channels": {
                "type": "integer",
                "description": "Image channels.",
                "minimum": 1,
                "maximum": 16,
                "default": 3
            },
            "patch_size": {
                "type": "integer",
                "description": "Spatial patch size in pixels.",
                "minimum": 1,
                "maximum": 256,
                "default": 16
            },
            "temporal_patch_size": {
                "type": "integer",
                "description": "Frames per patch.",
                "minimum": 1,
                "maximum": 16,
                "default": 2
            },
            "spatial_merge_size": {
                "type": "integer",
                "description": "The merger folds spatial_merge_size² neighbouring patches into one text token.",
                "minimum": 1,
                "maximum": 16,
                "default": 2
            },
            "num_position_embeddings": {
                "type": "integer",
                "description": "Size of the learned position-embedding grid (a square number).",
                "minimum": 1,
                "maximum": 1048576,
                "default": 2304
            },
            "rope_theta": {
                "type": "number",
                "description": "Base of the 2D axial rotary embedding.",
                "exclusiveMinimum": 0,
                "default": 10000.0
            },
            "initializer_range": {
                "type": "number",
                "description": "Std of the normal init of the vision weights.",
                "minimum": 0,
                "default": 0.02
            },
            "merger": {
                "$ref": "#/$defs/merger",
                "description": "Projects merged patches into the text tower's hidden size."
            }
        },
        "required": [
            "depth",
            "hidden_size",
            "num_heads",
            "intermediate_size",
            "merger"
        ]
    }

    @staticmethod
    def settings_problems(settings: dict) -> Iterator[SettingProblem]:
        """Every attention head gets the same share of the width, a multiple of 4; the position grid is square."""
        width, heads = settings["hidden_size"], settings["num_heads"]
        if width % heads:
            yield SettingProblem("num_heads", f"{heads} does not divide hidden_size {width}",
                                 f"set num_heads to a divisor of hidden_size ({divisors(width)})", heads, f"a divisor of {width}")
        elif (width // heads) % 4:  # the 2D rotary embedding splits a head in two axes, each in cos/sin halves
            fitting = ", ".join(str(h) for h in range(1, width // 4 + 1) if width % (4 * h) == 0)
            yield SettingProblem("num_heads", f"hidden_size {width} / num_heads {heads} = head_dim {width // heads}, "
                                 "not a multiple of 4 (the 2D rotary embedding's two axes of cos/sin halves)",
                                 f"set num_heads to one of {fitting}" if fitting else "make hidden_size a multiple of 4",
                                 heads, "hidden_size / num_heads a multiple of 4")
        positions = settings["num_position_embeddings"]
        side = math.isqrt(positions)
        if side * side != positions:
            yield SettingProblem("num_position_embeddings", f"{positions} is not a square number",
                                 f"the learned position table is a square grid: use {side * side} or {(side + 1) ** 2}",
                                 positions, "a square number")

    def __init__(
        self,
        *,
        depth: int,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        in_channels: int,
        patch_size: int,
        temporal_patch_size: int,
        spatial_merge_size: int,
        num_position_embeddings: int,
        rope_theta: float,
        merger: nn.Module,
        ops: OpTable,
        activation: str = "gelu_pytorch_tanh",
    ):
        super().__init__()
        self.num_grid_per_side = position_grid_side(num_position_embeddings)
        if self.num_grid_per_side**2 != num_position_embeddings:
            raise ValueError(
                f"vision tower: num_position_embeddings={num_position_embeddings} must be a square "
                "(the learned position table is a square grid, e.g. 2304 = 48 x 48)"
            )
        self.spatial_merge_size = spatial_merge_size
        self.patch_embed = VisionPatchEmbed(
            in_channels=in_channels, patch_size=patch_size, temporal_patch_size=temporal_patch_size, hidden_size=hidden_size
        )
        self.pos_embed = nn.Embedding(num_position_embeddings, hidden_size)
        self.rotary_pos_emb = VisionRotaryEmbedding(head_dim=hidden_size // num_heads, rope_theta=rope_theta)
        self.blocks = nn.ModuleList(
            VisionBlock(
                hidden_size=hidden_size,
                num_heads=num_heads,
                intermediate_size=intermediate_size,
                activation=activation,
                ops=ops,
            )
            for _ in range(depth)
        )
        self.merger = merger

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, layout: VisionLayout | None = None) -> torch.Tensor:
        """pixel_values [N, C*tp*p*p] (N = sum of t*h*w), grid_thw [I, 3] int -> [N / merge**2, out_hidden].

        `layout`: the grid's VisionLayout when the caller has it (the collator makes one per row),
        else it is computed here from a host copy of the grid."""
        with torch.profiler.record_function(PROFILER_RANGE):  # a profile's name for the tower's forward
            return self._forward(pixel_values, grid_thw, layout)

    def layout_of(self, grid_thw: torch.Tensor) -> VisionLayout:
        """The VisionLayout of `grid_thw` for this tower's position table and merge size (host work)."""
        return VisionLayout.of_grid(grid_thw, num_grid_per_side=self.num_grid_per_side, spatial_merge_size=self.spatial_merge_size)

    def _forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, layout: VisionLayout | None) -> torch.Tensor:
        # The layout (which table entries, rotary positions and attention spans each patch has) is
        # host work on a few integers per image, done before the tower runs and queued to the
        # device, so the GPU is never waited for here: each host read of a GPU tensor would leave
        # the GPU idle while the host then queues the tower's tiny kernels one by one.
        layout = layout if layout is not None else self.layout_of(grid_thw)
        if pixel_values.shape[0] != layout.num_patches:
            raise ValueError(
                f"vision tower: pixel_values has {pixel_values.shape[0]} patches but grid_thw {grid_thw.tolist()} "
                f"describes {layout.num_patches}; pass the processor's pixel_values and image_grid_thw together"
            )
        layout = layout.to(pixel_values.device)
        taps, tap_weights, position_ids, ctx = layout.taps, layout.tap_weights, layout.position_ids, layout.packing

        hidden_states = self.patch_embed(pixel_values)
        # fp32 weights: the weighted sum runs in fp32 even for a bf16 table, then is cast (as HF).
        pos_embeds = (self.pos_embed(taps) * tap_weights[:, :, None]).sum(1)
        hidden_states = hidden_states + pos_embeds.to(hidden_states.dtype)
        position_embeddings = self.rotary_pos_emb(position_ids)

        for block in self.blocks:
            hidden_states = block(hidden_states, position_embeddings, ctx)
        return self.merger(hidden_states)
