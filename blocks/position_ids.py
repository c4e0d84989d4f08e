"""The 3-axis mRoPE position rule of Qwen3.5 for one document.

Reproduces transformers' `Qwen3_5Model.get_rope_index` (with `get_vision_position_ids`) for a
single sequence holding images and videos:

- a text run continues the running position on all three axes (t = h = w);
- an image of patch grid (t, h, w) is laid out on its merged grid (t, h/m, w/m), m the spatial
  merge size: temporal position = start + frame, height = start + row, width = start + column;
- the text after an image resumes at start + max(h, w) / m (not start + number of image tokens);
- a video of grid (t, h, w) is t frame groups, each its own run of `<|video_pad|>` tokens (the
  timestamp text and `<|vision_end|><|vision_start|>` between them are text), and each run is
  placed as an image of grid (1, h, w): the reference splits video_grid_thw that way, because
  Qwen3.5 tells time by the timestamp text, not by the temporal axis.

Every consecutive run of `<|image_pad|>` tokens is one image, and of `<|video_pad|>` tokens one
frame group, as the reference groups its `mm_token_type_ids`; the grids are consumed in order.
"""

from __future__ import annotations

import torch


def mrope_position_ids(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    *,
    image_token_id: int,
    spatial_merge_size: int,
    video_grid_thw: torch.Tensor | None = None,
    video_token_id: int | None = None,
) -> torch.Tensor:
    """Positions of one document.

    input_ids:      [T] token ids of one document (positions start at 0 at its first token).
    image_grid_thw: [I, 3] (t, h, w) patch grid of each image of the document, in order; None or
                    [0, 3] for a document without images.
    video_grid_thw: [V, 3] (t, h, w) patch grid of each video, in order; None without videos.
    video_token_id: the `<|video_pad|>` id (needed only when the document has videos).
    Returns [3, T] int64 (temporal, height, width).
    """
    if input_ids.dim() != 1:
        raise ValueError(f"mrope_position_ids takes one document of shape [T], got shape {list(input_ids.shape)}")
    ids = input_ids.tolist()
    # pad token -> (what a run of it is, its grids in order); a video is t frame groups of grid
    # (1, h, w), one run of tokens each (see the module docstring).
    runs = {image_token_id: ("image", _grids(image_grid_thw))}
    video_frames = [(1, h, w) for t, h, w in _grids(video_grid_thw) for _ in range(t)]
    if video_token_id is not None:
        runs[video_token_id] = ("video frame group", video_frames)
    elif video_frames:
        raise ValueError("video_grid_thw given without video_token_id")
    consumed = dict.fromkeys(runs, 0)
    merge = spatial_merge_size

    pieces: list[torch.Tensor] = []
    current = 0  # the next text position
    i, length = 0, len(ids)
    while i < length:
        kind = ids[i] if ids[i] in runs else None  # None: text
        j = i
        while j < length and (ids[j] if ids[j] in runs else None) == kind:
            j += 1
        if kind is None:
            pieces.append(torch.arange(current, current + j - i, dtype=torch.long).expand(3, -1))
            current += j - i
        else:
            name, grids = runs[kind]
            index = consumed[kind]
            if index >= len(grids):
                raise ValueError(f"{name} run {index} at tokens {i}..{j - 1} has no grid: only {len(grids)} {name} grids given")
            t, h, w = grids[index]
            expected = t * (h // merge) * (w // merge)
            if j - i != expected:
                raise ValueError(
                    f"{name} {index} has {j - i} pad tokens but its grid {[t, h, w]} needs t*(h/{merge})*(w/{merge}) = {expected}"
                )
            pieces.append(_image_positions(current, t, h // merge, w // merge))
            current += max(h, w) // merge
            consumed[kind] = index + 1
        i = j
    for token, (name, grids) in runs.items():
        if consumed[token] != len(grids):
            raise ValueError(f"{len(grids)} {name} grids given but the document holds {consumed[token]} {name}s")
    if not pieces:
        return torch.zeros(3, 0, dtype=torch.long)
    return torch.cat(pieces, dim=1)


def _grids(grid_thw: torch.Tensor | None) -> list[tuple[int, int, int]]:
    return [] if grid_thw is None else [tuple(int(x) for x in g) for g in grid_thw.view(-1, 3).tolist()]


def _image_positions(start: int, grid_t: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """[3, grid_t * grid_h * grid_w] positions of one image on its merged grid, row-major."""
    t, h, w = torch.meshgrid(
        torch.arange(grid_t, dtype=torch.long),
        torch.arange(grid_h, dtype=torch.long),
        torch.arange(grid_w, dtype=torch.long),
        indexing="ij",
    )
    return torch.stack([t, h, w]).reshape(3, -1) + start
