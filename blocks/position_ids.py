"""The 3-axis mRoPE position rule of Qwen3.5 for one document.

Reproduces transformers' `Qwen3_5Model.get_rope_index` (with `get_vision_position_ids`) for a
single sequence holding images and no video:

- a text run continues the running position on all three axes (t = h = w);
- an image of patch grid (t, h, w) is laid out on its merged grid (t, h/m, w/m), m the spatial
  merge size: temporal position = start + frame, height = start + row, width = start + column;
- the text after an image resumes at start + max(h, w) / m (not start + number of image tokens).

Every consecutive run of `<|image_pad|>` tokens is one image, as the reference groups its
`mm_token_type_ids`; the grids are consumed in order.
"""

from __future__ import annotations

import torch


def mrope_position_ids(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    *,
    image_token_id: int,
    spatial_merge_size: int,
) -> torch.Tensor:
    """Positions of one document.

    input_ids:      [T] token ids of one document (positions start at 0 at its first token).
    image_grid_thw: [I, 3] (t, h, w) patch grid of each image of the document, in order; None or
                    [0, 3] for a text-only document.
    Returns [3, T] int64 (temporal, height, width).
    """
    if input_ids.dim() != 1:
        raise ValueError(f"mrope_position_ids takes one document of shape [T], got shape {list(input_ids.shape)}")
    ids = input_ids.tolist()
    grids = [] if image_grid_thw is None else [tuple(int(x) for x in g) for g in image_grid_thw.view(-1, 3).tolist()]
    merge = spatial_merge_size

    pieces: list[torch.Tensor] = []
    current = 0  # the next text position
    image_index = 0
    i, length = 0, len(ids)
    while i < length:
        is_image = ids[i] == image_token_id
        j = i
        while j < length and (ids[j] == image_token_id) == is_image:
            j += 1
        if not is_image:
            pieces.append(torch.arange(current, current + j - i, dtype=torch.long).expand(3, -1))
            current += j - i
        else:
            if image_index >= len(grids):
                raise ValueError(
                    f"image run {image_index} at tokens {i}..{j - 1} has no grid: only {len(grids)} image_grid_thw rows given"
                )
            t, h, w = grids[image_index]
            expected = t * (h // merge) * (w // merge)
            if j - i != expected:
                raise ValueError(
                    f"image {image_index} has {j - i} <|image_pad|> tokens but its grid {[t, h, w]} needs "
                    f"t*(h/{merge})*(w/{merge}) = {expected}"
                )
            pieces.append(_image_positions(current, t, h // merge, w // merge))
            current += max(h, w) // merge
            image_index += 1
        i = j
    if image_index != len(grids):
        raise ValueError(f"{len(grids)} image grids given but the document holds {image_index} images")
    if not pieces:
        return torch.zeros(3, 0, dtype=torch.long)
    return torch.cat(pieces, dim=1)


def _image_positions(start: int, grid_t: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """[3, grid_t * grid_h * grid_w] positions of one image on its merged grid, row-major."""
    t, h, w = torch.meshgrid(
        torch.arange(grid_t, dtype=torch.long),
        torch.arange(grid_h, dtype=torch.long),
        torch.arange(grid_w, dtype=torch.long),
        indexing="ij",
    )
    return torch.stack([t, h, w]).reshape(3, -1) + start
