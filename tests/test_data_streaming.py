"""The streaming loader (issue 16): sources read a window at a time, batches that do not depend on
the worker count, and a resume at any step that reproduces the uninterrupted stream bitwise, at 1
and 2 ranks, with 0 and 2 workers, across windows and epochs."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from assembler.data import DataError, build_loader_from_sections
from assembler.data.chunks import RECORDS_PER_CHUNK, index_file
from assembler.data.records import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY_SPEC = yaml.safe_load((ROOT / "specs" / "qwen3_5_tiny.yaml").read_text())
TINY_IMAGES = ROOT / "specs" / "data" / "tiny" / "images"
WORDS = "a model reads each token of a document and learns to predict the next one".split()
ROW = 128  # tokens per row


def _write_records(folder: Path, count: int, *, name: str = "records.jsonl", seed: int = 0) -> Path:
    """`count` chats, every fifth a caption of a tiny-set image, 3–40 words each."""
    rng = random.Random(seed)
    images = folder / "images"
    if not images.exists():
        shutil.copytree(TINY_IMAGES, images)
    lines = []
    for i in range(count):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
        user = [{"type": "image", "path": f"images/{i % 8:04d}.png"}, {"type": "text", "text": "Describe."}] if i % 5 == 0 else words
        lines.append(json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": words}]}))
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _loader(sources: list[dict], *, window: int = RECORDS_PER_CHUNK, rank: int = 0, world_size: int = 1, workers: int = 0,
            on_error: str = "raise", shuffle: bool = True):
    data = {**TINY_SPEC["data"], "sources": sources, "workers": workers, "on_error": on_error, "shuffle": shuffle,
            "packing": {"length": ROW, "window": window}}
    return build_loader_from_sections(data, base_dir=ROOT, tokens_per_step=ROW, seed=7, tokens=TINY_SPEC["model"]["tokens"],
                                      vision=TINY_SPEC["model"]["vision"], vocab_size=TINY_SPEC["model"]["text"]["vocab_size"],
                                      rank=rank, world_size=world_size)


def _take(batches, count: int) -> list[dict]:
    return [next(batches) for _ in range(count)]


def _assert_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        for key in ("input_ids", "shift_labels", "pixel_values", "image_grid_thw"):
            assert (a[key] is None) == (b[key] is None) and (a[key] is None or torch.equal(a[key], b[key])), key
        assert torch.equal(a["packing"].cu_seqlens, b["packing"].cu_seqlens)
        assert torch.equal(a["packing"].position_ids, b["packing"].position_ids)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("stream")
    return [{"path": str(_write_records(folder, 3 * RECORDS_PER_CHUNK + 40))}]  # 4 chunks: 4 windows of one chunk


@pytest.fixture(scope="module")
def uninterrupted(source) -> dict[int, list[dict]]:
    """Each rank's first batches of an uninterrupted run, per world size (in process)."""
    loader = _loader(source)
    steps = len(loader.rows_of_epoch(0)) + 5  # into the second epoch
    return {1: _take(iter(loader), steps), **{f"2/{r}": _take(iter(_loader(source, rank=r, world_size=2)), steps // 2) for r in (0, 1)}}


def test_the_stream_is_read_a_window_at_a_time(source):
    loader = _loader(source)
    assert loader.windows.windows_in_epoch(0) == 4
    next(loader)
    assert loader._plan_cache[:2] == (0, 0)  # one window planned, the others not read
    rows = loader.rows_of_epoch(0)
    keys = [key for row in rows for key in row]
    assert len(keys) == len(set(keys)) == 3 * RECORDS_PER_CHUNK + 40  # every record once per epoch
    assert rows != loader.rows_of_epoch(1) and sorted(map(str, rows)) != sorted(map(str, loader.rows_of_epoch(1)))
    in_order = _loader(source, shuffle=False)  # data.shuffle: false: the chunks in file order, every epoch
    assert [chunk.first for chunk, _ in in_order.windows.epoch_chunks(1, seed=7)] == [1, 257, 513, 769]


def test_two_ranks_take_every_other_global_row(source, uninterrupted):
    one = uninterrupted[1]
    for rank in (0, 1):
        _assert_equal(uninterrupted[f"2/{rank}"], one[rank::2][: len(uninterrupted[f"2/{rank}"])])


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_any_step_reproduces_the_stream_bitwise(source, uninterrupted, world_size, workers):
    rows_per_epoch = len(_loader(source).rows_of_epoch(0))
    for rank in range(world_size):
        want = uninterrupted[1] if world_size == 1 else uninterrupted[f"2/{rank}"]
        # Mid-window, at a window's last row, and past the end of the first epoch.
        for stop in (3, rows_per_epoch // world_size - 1, len(want) - 4):
            first = _loader(source, rank=rank, world_size=world_size, workers=workers)
            _assert_equal(_take(iter(first), stop), want[:stop])
            state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
            resumed = _loader(source, rank=rank, world_size=world_size, workers=2 - workers)  # the other worker count
            resumed.load_state_dict(state)
            _assert_equal(_take(iter(resumed), 3), want[stop:stop + 3])


def test_a_resume_onto_a_changed_file_or_window_is_refused(tmp_path):
    path = _write_records(tmp_path, 300)
    loader = _loader([{"path": str(path)}])
    _take(loader, 2)
    state = loader.state_dict()
    with pytest.raises(DataError, match="the data .* differs from the saved run's"):
        _loader([{"path": str(path)}], window=2 * RECORDS_PER_CHUNK).load_state_dict(state)
    _loader([{"path": str(path)}], on_error="skip").load_state_dict(state)  # the way on after a bad record
    path.write_text(path.read_text().replace("model", "modem", 1))
    with pytest.raises(DataError, match="the data .* differs from the saved run's"):
        _loader([{"path": str(path)}]).load_state_dict(state)


def test_weights_copy_chunks_and_draw_fractions_of_them(tmp_path):
    doubled, halved = _write_records(tmp_path, 300, name="a.jsonl"), _write_records(tmp_path, 300, name="b.jsonl", seed=1)
    loader = _loader([{"path": str(doubled), "weight": 2}, {"path": str(halved), "weight": 0.5}])
    for epoch in (0, 1):
        keys = [key for row in loader.rows_of_epoch(epoch) for key in row]
        from_a = [k for k in keys if k.startswith(f"{doubled}:")]
        from_b = [k for k in keys if k.startswith(f"{halved}:")]
        assert len(from_a) == 600 and set(map(from_a.count, from_a)) == {2}
        assert len(from_b) == len(set(from_b)) == round(0.5 * 256) + round(0.5 * 44)  # per chunk: 256 and 44 records
    assert {k for row in loader.rows_of_epoch(0) for k in row if k.startswith(f"{halved}:")} != {
        k for row in loader.rows_of_epoch(1) for k in row if k.startswith(f"{halved}:")}  # a new half each epoch


def test_chunks_seek_to_the_records_read_jsonl_reads(tmp_path):
    path = _write_records(tmp_path, 600)
    chunks = index_file(path, source=0)
    assert [c.count for c in chunks] == [256, 256, 88] and [c.first for c in chunks] == [1, 257, 513]
    streamed = [r for chunk in chunks for r in chunk.read(on_error="raise").records]
    assert streamed == read_jsonl(path).records  # the same records, `file:line` included


def test_a_bad_record_in_a_later_window_names_its_line_and_is_skipped_on_request(tmp_path):
    path = _write_records(tmp_path, 600)
    last_chunk = _loader([{"path": str(path)}]).windows.epoch_chunks(0, seed=7)[-1][0]  # epoch 0's last window
    lines = path.read_text().splitlines()
    bad = last_chunk.first + 5
    lines[bad - 1] = '{"messages": ['
    path.write_text("\n".join(lines) + "\n")
    loader = _loader([{"path": str(path)}])
    next(loader)  # the first window plans: the bad line is not read yet
    with pytest.raises(DataError, match=rf"{path}:{bad}: not valid JSON"):
        loader.rows_of_epoch(0)
    skipping = _loader([{"path": str(path)}], on_error="skip")
    assert len([k for row in skipping.rows_of_epoch(0) for k in row]) == 599
