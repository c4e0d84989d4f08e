"""Qwen-VL image preprocessing: grids within the pixel bounds, Qwen3.5's normalisation, offline."""

import pytest
import torch
from PIL import Image

from assembler.data import DataError, ImageProcessor


@pytest.fixture(scope="module")
def processor():
    return ImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2, min_pixels=4096, max_pixels=65536)


@pytest.mark.parametrize(
    "size, grid",
    [
        ((64, 64), (1, 4, 4)),  # already a multiple of patch x merge = 32
        ((100, 40), (1, 4, 8)),  # (w, h): 96 x 32 would be below min_pixels, so scaled up to 128 x 64
        ((1000, 1000), (1, 16, 16)),  # scaled down to max_pixels = 256 x 256
    ],
)
def test_grid_from_header_equals_the_processors(processor, tmp_path, size, grid):
    path = tmp_path / "x.png"
    Image.new("RGB", size, (255, 255, 255)).save(path)
    assert processor.grid_thw(path) == grid
    pixel_values, image_grid_thw = processor([path])
    assert image_grid_thw.tolist() == [list(grid)]
    assert pixel_values.shape == (grid[0] * grid[1] * grid[2], 3 * 2 * 16 * 16)
    assert processor.num_tokens(grid) == grid[1] * grid[2] // 4
    h, w = grid[1] * 16, grid[2] * 16
    assert 4096 <= h * w <= 65536


def test_qwen3_5_normalisation(processor, tmp_path):
    """mean = std = 0.5: white -> 1, black -> -1 (CLIP's statistics would give other values)."""
    white, black = tmp_path / "w.png", tmp_path / "b.png"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(white)
    Image.new("L", (64, 64), 0).save(black)  # greyscale input is converted to RGB
    pixel_values, grids = processor([white, black])
    assert grids.tolist() == [[1, 4, 4], [1, 4, 4]]
    assert torch.allclose(pixel_values[:16], torch.ones(16, 1536))
    assert torch.allclose(pixel_values[16:], -torch.ones(16, 1536))


def test_unreadable_image_is_a_clear_error(processor, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(DataError, match="bad.png cannot be read as an image"):
        processor.grid_thw(bad)


def _truncated_png(tmp_path):
    good = tmp_path / "good.png"
    Image.effect_noise((64, 64), 64).convert("RGB").save(good)
    bad = tmp_path / "truncated.png"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # header whole, pixel data cut
    return good, bad


def test_truncated_image_fails_when_checked_not_at_batch_time(processor, tmp_path):
    """Issue 12, defect 5: the header alone passed; the image is decoded when checked."""
    _, bad = _truncated_png(tmp_path)
    with pytest.raises(DataError, match=r"truncated.png cannot be decoded"):
        processor.grid_thw(bad)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_truncated_image_obeys_on_error_and_names_the_record(processor, tmp_path, on_error):
    import json

    from assembler.data import load_tokenizer
    from assembler.data.encoding import encode_records
    from assembler.data.records import read_jsonl

    good, bad = _truncated_png(tmp_path)
    lines = [{"messages": [{"role": "user", "content": [{"type": "image", "path": image.name}]},
                           {"role": "assistant", "content": "noise"}]} for image in (good, bad, good)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = read_jsonl(tmp_path / "data.jsonl").records
    run = lambda: encode_records(records, load_tokenizer(None), image_processor=processor, loss_on="assistant",  # noqa: E731
                                 max_length=256, overlong="truncate", on_error=on_error)
    if on_error == "raise":
        with pytest.raises(DataError, match=r"data.jsonl:2: image .*truncated.png cannot be decoded"):
            run()
    else:
        samples, stats = run()
        assert len(samples) == 2 and stats.skipped == 1
        processor([s.images[0] for s in samples])  # what is left decodes at batch time
