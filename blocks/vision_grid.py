"""Per-patch layout of a batch of images: where each patch sits, and which patches attend together.

Everything here is a pure function of `grid_thw` (no weights), computed once per vision forward on
the host, from a host copy of the grid (it uses `.tolist()`), outside the per-block compiled
regions; the tower queues the results to its device. The three
functions reproduce transformers' `vision_utils` helpers that Qwen3.5's vision model calls
(`get_vision_interpolation_indices_and_weights`, `get_vision_position_ids`,
`get_vision_attention_seqlens`) in plain PyTorch, op for op, so the results are bitwise equal.

Patch order (as the Qwen image processor emits it): per image, per frame, the h x w patch grid is
walked block-major over `merge x merge` spatial-merge blocks (block row, block col, row in block,
col in block), so that every `merge**2` consecutive patches are one merged token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blocks.packing import PackingContext, host_to_device


def position_grid_side(num_position_embeddings: int) -> int:
    """The side of the square learned position table of `num_position_embeddings` entries."""
    return math.isqrt(num_position_embeddings)


def position_embedding_taps(
    grid_thw: torch.Tensor, *, num_grid_per_side: int, spatial_merge_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear (align_corners=True) resampling of the square learned position table to each grid.

    grid_thw: [I, 3] (t, h, w) per image. Returns indices [N, 4] (int64, into the flattened
    `num_grid_per_side**2` table) and weights [N, 4] (fp32), N = sum(t*h*w), patches in the
    block-major order described in the module docstring. The patch's position embedding is
    `(table[indices] * weights[..., None]).sum(1)`.
    """
    side = num_grid_per_side
    merge = spatial_merge_size
    device = grid_thw.device

    counts = grid_thw[:, 0] * grid_thw[:, 1] * grid_thw[:, 2]
    heights = torch.repeat_interleave(grid_thw[:, 1], counts)
    widths = torch.repeat_interleave(grid_thw[:, 2], counts)
    starts = torch.repeat_interleave(F.pad(counts.cumsum(0)[:-1], (1, 0)), counts)
    # Index inside one frame (0 .. h*w-1); frames of one image repeat the same positions.
    within = (torch.arange(counts.sum(), device=device) - starts) % (heights * widths)
    blocks_w = widths // merge
    in_col = within % merge
    in_row = (within // merge) % merge
    block_col = (within // (merge * merge)) % blocks_w
    block_row = within // (merge * merge * blocks_w)
    row = block_row * merge + in_row
    col = block_col * merge + in_col

    h_taps, h_weights = _bilinear_axis_taps(row, heights, side)
    w_taps, w_weights = _bilinear_axis_taps(col, widths, side)
    indices = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
    weights = (h_weights[:, :, None] * w_weights[:, None, :]).reshape(-1, 4)
    return indices, weights


def _bilinear_axis_taps(index: torch.Tensor, size: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Taps [N, 2] (floor, floor+1, clamped to the table) and weights [N, 2] along one axis.

    index: [N] target coordinate on an axis of per-patch length `size` [N]. align_corners=True:
    the first and last target positions land exactly on the first and last table entries.
    """
    index = index.to(torch.float32)
    # clamp(min=1): a 1-long axis has only index 0, which must map to 0 rather than divide by zero.
    src = index * (side - 1) / torch.clamp(size - 1, min=1)
    floor = torch.floor(src)
    offsets = torch.arange(0, 2, device=index.device)
    taps = (floor.long()[:, None] + offsets).clamp(0, side - 1)
    distance = (src[:, None] - floor[:, None] - offsets).abs()
    weights = (1 - distance).clamp(min=0)
    return taps, weights


def rotary_position_ids(grid_thw: torch.Tensor, *, spatial_merge_size: int) -> torch.Tensor:
    """(row, col) of every patch, [N, 2] int64, in the block-major patch order; frames repeat them."""
    device = grid_thw.device
    merge = spatial_merge_size
    position_ids = []
    for image, (t, h, w) in enumerate(grid_thw.tolist()):
        if h % merge or w % merge:
            raise ValueError(
                f"vision grid_thw[{image}] = {[t, h, w]}: height and width (in patches) must be multiples of "
                f"spatial_merge_size={merge}; resize the image (the Qwen image processor does this)"
            )
        hpos_ids, wpos_ids = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        block_shape = (h // merge, merge, w // merge, merge)
        hpos_ids = hpos_ids.reshape(block_shape).transpose(1, 2).flatten()
        wpos_ids = wpos_ids.reshape(block_shape).transpose(1, 2).flatten()
        position_ids.append(torch.stack([hpos_ids, wpos_ids], dim=-1).repeat(t, 1))
    return torch.cat(position_ids, dim=0)


def vision_packing_context(grid_thw: torch.Tensor) -> PackingContext:
    """The attention layout of the patches: one document per frame of every image (as transformers:
    frames of a video do not attend to each other; an image is one frame).

    The context is a single batch row [1, N]. Its `position_ids` field is required by the dataclass
    but no vision op reads it (vision positions are the 2-D `rotary_position_ids`); it holds the
    text-style default, each patch's index inside its frame, on all three axes.
    """
    frame_lengths = torch.repeat_interleave(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0]).tolist()
    return PackingContext.from_document_lengths([frame_lengths]).to(grid_thw.device)


@dataclass(frozen=True)
class VisionLayout:
    """Everything one vision-tower call reads of its images' grids, computed on the host once per
    batch (by the collator, in the data workers; or by the tower from a host copy of the grid), so
    the tower never reads a GPU tensor back: N = sum of t·h·w patches.

    taps:         [N, 4] int64, the learned position table's entries each patch interpolates
    tap_weights:  [N, 4] fp32, their bilinear weights (`position_embedding_taps`)
    position_ids: [N, 2] int64, each patch's (row, col) for the rotary embedding
    packing:      one document per frame (`vision_packing_context`)
    """

    taps: torch.Tensor
    tap_weights: torch.Tensor
    position_ids: torch.Tensor
    packing: PackingContext

    @property
    def num_patches(self) -> int:
        return self.taps.shape[0]

    @staticmethod
    def of_grid(grid_thw: torch.Tensor, *, num_grid_per_side: int, spatial_merge_size: int) -> "VisionLayout":
        """The layout of `grid_thw` [I, 3] (t, h, w per image), computed on the host."""
        grid_thw = grid_thw.cpu()
        taps, tap_weights = position_embedding_taps(grid_thw, num_grid_per_side=num_grid_per_side,
                                                    spatial_merge_size=spatial_merge_size)
        return VisionLayout(taps=taps, tap_weights=tap_weights,
                            position_ids=rotary_position_ids(grid_thw, spatial_merge_size=spatial_merge_size),
                            packing=vision_packing_context(grid_thw))

    def to(self, device: torch.device | str) -> "VisionLayout":
        """The layout on `device`; a host-to-GPU copy does not wait for the GPU (`host_to_device`)."""
        return VisionLayout(taps=host_to_device(self.taps, device), tap_weights=host_to_device(self.tap_weights, device),
                            position_ids=host_to_device(self.position_ids, device), packing=self.packing.to(device))

    def pin_memory(self) -> "VisionLayout":
        """The layout in page-locked host memory (the DataLoader calls this with `pin_memory=True`)."""
        return VisionLayout(taps=self.taps.pin_memory(), tap_weights=self.tap_weights.pin_memory(),
                            position_ids=self.position_ids.pin_memory(), packing=self.packing.pin_memory())
