"""Packing: rows of exactly the budget, every document boundary in cu_seqlens, no cross-document
target, positions restarting per document, overlong samples truncated/dropped and counted."""

import random
from pathlib import Path

import pytest
import torch

from assembler.data import IGNORE_INDEX, EncodedSample, ImageProcessor, PackingStats, collate_row, plan_rows
from assembler.data.chat_template import next_token_labels
from assembler.data.packing import fit_to_budget
from blocks.position_ids import mrope_position_ids

TINY = Path(__file__).resolve().parents[1] / "specs" / "data" / "tiny"
PAD, IMAGE, V_START, V_END = 248044, 248056, 248053, 248054
GRID = (1, 4, 4)  # 64x64 image -> 16 patches -> 4 merged tokens


def _text_sample(length: int, first: int = 10) -> EncodedSample:
    ids = list(range(first, first + length))
    return EncodedSample(ids, next_token_labels(ids, [True] * length), [], [], f"text{length}")


def _image_sample(before: int, after: int, image: str = "0000.png") -> EncodedSample:
    ids = list(range(10, 10 + before)) + [V_START] + [IMAGE] * 4 + [V_END] + list(range(50, 50 + after))
    trained = [i >= before + 6 for i in range(len(ids))]
    return EncodedSample(ids, next_token_labels(ids, trained), [TINY / "images" / image], [GRID], "image")


@pytest.fixture(scope="module")
def image_processor():
    return ImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2, min_pixels=4096, max_pixels=65536)


def _collate(samples, budget, image_processor=None):
    return collate_row(samples, budget=budget, pad_token_id=PAD, image_token_id=IMAGE, spatial_merge_size=2,
                       image_processor=image_processor)


def test_best_fit_decreasing_small_example():
    assert plan_rows([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]


def test_plan_respects_budget_and_places_every_sample_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    rows = plan_rows(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    efficiency = sum(lengths) / (len(rows) * 128)
    assert efficiency > 0.95  # best fit on many small documents packs tightly
    with pytest.raises(ValueError, match="more than the budget"):
        plan_rows([129], 128)


def test_collated_row_layout():
    samples = [_text_sample(5), _text_sample(3, first=30), _text_sample(4, first=40)]
    batch = _collate(samples, budget=16)
    ctx = batch["packing"]
    assert batch["input_ids"].shape == (1, 16) and batch["shift_labels"].shape == (1, 16)
    assert ctx.cu_seqlens.tolist() == [0, 5, 8, 12, 16]  # three documents + one padding document
    assert ctx.max_seqlen == 5
    assert ctx.seq_idx.tolist() == [[0] * 5 + [1] * 3 + [2] * 4 + [3] * 4]
    assert batch["input_ids"][0, 12:].tolist() == [PAD] * 4
    labels = batch["shift_labels"][0]
    assert labels[12:].tolist() == [IGNORE_INDEX] * 4  # padding is never a target
    for end in ctx.cu_seqlens[1:].tolist():  # no target crosses a document boundary
        assert labels[end - 1] == IGNORE_INDEX
    assert labels[:4].tolist() == [11, 12, 13, 14]  # next-token targets within a document
    positions = ctx.position_ids
    assert positions.shape == (3, 1, 16)
    assert positions[0, 0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3]  # restart per document
    assert batch["pixel_values"] is None and batch["image_grid_thw"] is None


def test_exactly_full_row_has_no_padding_document():
    batch = _collate([_text_sample(10), _text_sample(6)], budget=16)
    assert batch["packing"].cu_seqlens.tolist() == [0, 10, 16]


def test_collated_images_and_mrope_positions(image_processor):
    samples = [_text_sample(3), _image_sample(2, 3), _image_sample(0, 2, image="0001.png")]
    batch = _collate(samples, budget=32, image_processor=image_processor)
    assert batch["image_grid_thw"].tolist() == [list(GRID)] * 2
    assert batch["pixel_values"].shape == (2 * 16, 3 * 2 * 16 * 16)
    assert batch["pixel_values"].dtype == torch.float32
    assert int((batch["input_ids"] == IMAGE).sum()) == 8
    positions = batch["packing"].position_ids[:, 0]
    start = len(samples[0])
    doc = samples[1]
    expected = mrope_position_ids(torch.tensor(doc.input_ids), torch.tensor([GRID]), image_token_id=IMAGE, spatial_merge_size=2)
    assert torch.equal(positions[:, start : start + len(doc)], expected)
    assert positions[:, start].tolist() == [0, 0, 0]  # each document's positions restart at 0


def test_truncate_keeps_whole_images_and_masks_the_last_target():
    sample = _image_sample(2, 10)  # 2 text + 6 image + 10 text = 18 tokens
    short = fit_to_budget(sample, 12, overlong="truncate", vision_start_id=V_START, vision_end_id=V_END)
    assert len(short) == 12 and short.images == sample.images and short.labels[-1] == IGNORE_INDEX
    assert short.labels[:-1] == sample.labels[:11]
    # A cut inside the image moves before <|vision_start|>: no target is left there, so it is dropped.
    assert fit_to_budget(sample, 5, overlong="truncate", vision_start_id=V_START, vision_end_id=V_END) is None
    text = _text_sample(20)
    cut = fit_to_budget(text, 8, overlong="truncate", vision_start_id=V_START, vision_end_id=V_END)
    assert cut.input_ids == text.input_ids[:8] and cut.labels == text.labels[:7] + [IGNORE_INDEX]
    assert fit_to_budget(text, 8, overlong="drop", vision_start_id=V_START, vision_end_id=V_END) is None
    assert fit_to_budget(text, 20, overlong="drop", vision_start_id=V_START, vision_end_id=V_END) is text


def test_truncate_before_a_cut_image_drops_that_image():
    ids = [1, 2, 3, 4] + [V_START] + [IMAGE] * 4 + [V_END] + [5, 6]
    sample = EncodedSample(ids, next_token_labels(ids, [True] * len(ids)), [TINY / "images/0000.png"], [GRID], "s")
    short = fit_to_budget(sample, 7, overlong="truncate", vision_start_id=V_START, vision_end_id=V_END)
    assert short.input_ids == [1, 2, 3, 4] and short.images == [] and short.image_grids == []


def test_overlong_counted_and_efficiency_reported():
    from assembler.data.encoding import encode_records
    from assembler.data.records import TextRecord

    class OneTokenPerChar:
        def encode(self, text):
            return [ord(c) for c in text]

        def token_id(self, name):
            return {"<|endoftext|>": PAD, "<|vision_start|>": V_START, "<|vision_end|>": V_END}[name]

    records = [TextRecord("a" * n, f"t:{n}") for n in (3, 30, 7, 50)]
    for overlong, kept, truncated, dropped in (("truncate", 4, 2, 0), ("drop", 2, 0, 2)):
        samples, stats = encode_records(records, OneTokenPerChar(), image_processor=None, loss_on="assistant",
                                        max_length=16, overlong=overlong)
        assert (len(samples), stats.truncated, stats.dropped) == (kept, truncated, dropped)
        assert all(len(s) <= 16 for s in samples)
    stats = PackingStats(samples=3, rows=2, real_tokens=48, budget_tokens=64)
    assert stats.efficiency == 0.75 and "75.0%" in stats.describe()
