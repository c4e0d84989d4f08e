"""Packing documents into fixed-size rows, and collating a row into the model's batch.

Every row holds exactly `budget` (= `train.tokens_per_step`) tokens: whole documents placed by
best-fit decreasing (each document, longest first, goes into the row it fills most tightly; a
new row is opened when none has room), then the free tail of the row filled by one padding
document of `<|endoftext|>` tokens whose labels are all -100 (it is its own document in
`cu_seqlens`, so it attends to nothing real and no real token attends to it). A document longer
than the budget is truncated to it or dropped (`overlong`), and counted.

The collator computes the packing context once, on the host: `cu_seqlens`, `max_seqlen`,
`seq_idx`, and 3-axis mRoPE positions per document (restarting at 0 in every document), and the
row's image and video tensors, each kind in order of appearance.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from assembler.data.chat_template import IGNORE_INDEX, EncodedSample
from assembler.data.images import ImageProcessor
from assembler.data.records import DataError
from assembler.data.videos import VideoProcessor
from blocks.packing import PackingContext
from blocks.position_ids import mrope_position_ids
from blocks.vision_grid import VisionLayout

OVERLONG = ("truncate", "drop")


@dataclass
class PackingStats:
    """Counts over the samples seen by the packer; `efficiency` = real tokens / row tokens."""

    samples: int = 0
    skipped: int = 0  # bad records skipped under data.on_error: skip
    truncated: int = 0
    dropped: int = 0
    rows: int = 0
    real_tokens: int = 0
    budget_tokens: int = 0

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.budget_tokens if self.budget_tokens else 0.0

    def describe(self) -> str:
        return (
            f"{self.samples} samples in {self.rows} rows, packing efficiency {self.efficiency:.1%} "
            f"({self.truncated} truncated, {self.dropped} dropped as overlong, {self.skipped} bad records skipped)"
        )


def fit_to_budget(sample: EncodedSample, budget: int, *, overlong: str, vision_start_id: int, vision_end_id: int) -> EncodedSample | None:
    """`sample` if it fits `budget` tokens; else truncated (never inside an image or video) or None (drop).

    A truncated sample keeps its first tokens up to the budget, minus any image or video cut in half
    (each is all or nothing); its last label becomes -100. If no target is left, it is dropped.

    The units are the top-level `<|vision_start|>` … `<|vision_end|>` blocks: an image's holds its
    pads; a video's holds one nested block per frame group (chat_template's layout), which is how a
    video is told from an image here.
    """
    if overlong not in OVERLONG:
        raise ValueError(f"data.packing.overlong: {overlong!r} is not one of {', '.join(OVERLONG)}")
    if len(sample) <= budget:
        return sample
    if overlong == "drop":
        return None
    cut, kept_images, kept_videos = budget, 0, 0
    start, depth, nested = None, 0, False
    for index, token in enumerate(sample.input_ids[:budget]):
        if token == vision_start_id:
            if depth == 0:
                start, nested = index, False
            else:
                nested = True
            depth += 1
        elif token == vision_end_id and depth > 0:
            depth -= 1
            if depth == 0:
                kept_videos, kept_images = (kept_videos + 1, kept_images) if nested else (kept_videos, kept_images + 1)
                start = None
    if start is not None:  # the budget ends inside an image or video: cut before its <|vision_start|>
        cut = start
    labels = sample.labels[:cut]
    if labels:
        labels[-1] = IGNORE_INDEX
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return EncodedSample(sample.input_ids[:cut], labels, sample.images[:kept_images], sample.image_grids[:kept_images],
                         sample.source, sample.videos[:kept_videos], sample.video_grids[:kept_videos])


def plan_rows(lengths: list[int], budget: int) -> list[list[int]]:
    """Best-fit decreasing: sample indices per row; every length must be <= budget.

    Ties in length keep their input order, so a shuffled input gives shuffled rows.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free tokens, row id)
    for index in order:
        length = lengths[index]
        if length > budget:
            raise ValueError(f"sample {index} has {length} tokens, more than the budget {budget}; fit_to_budget first")
        at = bisect.bisect_left(free, (length, -1))
        if at < len(free):
            room, row = free.pop(at)
        else:
            room, row = budget, len(rows)
            rows.append([])
        rows[row].append(index)
        if room - length > 0:
            bisect.insort(free, (room - length, row))
    return rows


def collate_row(
    samples: list[EncodedSample],
    *,
    budget: int,
    pad_token_id: int,
    image_token_id: int,
    spatial_merge_size: int,
    image_processor: ImageProcessor | None,
    video_token_id: int | None = None,
    video_processor: VideoProcessor | None = None,
    num_grid_per_side: int | None = None,
) -> dict:
    """Pack `samples` (total length <= budget) into one row of exactly `budget` tokens.
    `num_grid_per_side`: the vision tower's learned position grid (√ num_position_embeddings), for
    the rows' VisionLayouts; None: none are made (the tower makes them from the grids).

    Returns the model's keyword arguments:
      input_ids           [1, T] int64
      shift_labels        [1, T] int64, next-token targets (-100: no loss), see chat_template
      pixel_values        [N_patches, C·tp·p·p] fp32, or None when the row has no image
      image_grid_thw      [I, 3] int64, or None
      pixel_values_videos [N_video_patches, C·tp·p·p] fp32, or None when the row has no video
      video_grid_thw      [V, 3] int64, or None
      image_layout        VisionLayout of image_grid_thw (blocks/vision_grid.py), or None
      video_layout        VisionLayout of video_grid_thw, or None
      packing             PackingContext (cu_seqlens, max_seqlen, seq_idx, position_ids [3, 1, T])
    The layouts are made here, on the host and in the data workers when there are any, so the
    training step's vision tower reads no GPU tensor back to lay out its patches.
    """
    used = sum(len(s) for s in samples)
    if used > budget:
        raise ValueError(f"{used} tokens do not fit a row of {budget}")
    input_ids = [t for s in samples for t in s.input_ids]
    labels = [t for s in samples for t in s.labels]
    lengths = [len(s) for s in samples]
    positions = []
    for sample in samples:
        grids = torch.tensor(sample.image_grids, dtype=torch.long).view(-1, 3)
        video_grids = torch.tensor(sample.video_grids, dtype=torch.long).view(-1, 3) if sample.video_grids else None
        positions.append(
            mrope_position_ids(
                torch.tensor(sample.input_ids, dtype=torch.long), grids,
                image_token_id=image_token_id, spatial_merge_size=spatial_merge_size,
                video_grid_thw=video_grids, video_token_id=video_token_id,
            )
        )
    if used < budget:  # the padding document
        pad = budget - used
        input_ids += [pad_token_id] * pad
        labels += [IGNORE_INDEX] * pad
        lengths.append(pad)
        positions.append(torch.arange(pad, dtype=torch.long).expand(3, -1))
    position_ids = torch.cat(positions, dim=1).unsqueeze(1)  # [3, 1, T]
    packing = PackingContext.from_document_lengths([lengths], position_ids=position_ids)

    pixel_values, image_grid_thw = _media(samples, "images", "image_grids", image_processor)
    pixel_values_videos, video_grid_thw = _media(samples, "videos", "video_grids", video_processor)

    def layout(grid_thw: torch.Tensor | None) -> VisionLayout | None:
        if grid_thw is None or num_grid_per_side is None:
            return None
        return VisionLayout.of_grid(grid_thw, num_grid_per_side=num_grid_per_side, spatial_merge_size=spatial_merge_size)

    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),
        "shift_labels": torch.tensor([labels], dtype=torch.long),
        "pixel_values": pixel_values,
        "image_grid_thw": image_grid_thw,
        "pixel_values_videos": pixel_values_videos,
        "video_grid_thw": video_grid_thw,
        "image_layout": layout(image_grid_thw),
        "video_layout": layout(video_grid_thw),
        "packing": packing,
    }


def _media(samples: list[EncodedSample], files: str, grids: str,
           processor: ImageProcessor | VideoProcessor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(pixel values, grid_thw) of the row's images or videos (`files` "images" / "videos", their
    `grids`) in order, decoded by `processor`; (None, None) when the row has none."""
    paths = [path for s in samples for path in getattr(s, files)]
    if not paths:
        return None, None
    kind = files[:-1]
    if processor is None:
        raise ValueError(f"the row holds {files} but no {kind} processor was given (does the spec have model.vision?)")
    try:
        pixel_values, grid_thw = processor(paths)
    except DataError as error:  # the file changed after it was checked: say which record holds it
        sources = ", ".join(s.source for s in samples if getattr(s, files))
        raise DataError(f"{error} (in the record at {sources}; it changed after the data was checked)") from None
    expected = torch.tensor([g for s in samples for g in getattr(s, grids)], dtype=torch.long)
    if not torch.equal(grid_thw, expected):
        raise ValueError(f"{kind} grids changed since encoding: {grid_thw.tolist()} != {expected.tolist()}")
    return pixel_values, grid_thw
