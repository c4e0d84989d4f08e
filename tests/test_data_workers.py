"""`data.workers`: rows collated in DataLoader worker processes are the rows the training process
would have collated, in the same order, for any number of workers, ranks and resume points; the
saved position counts the rows handed out, not those prefetched."""

import random
from pathlib import Path

import pytest
import torch

from assembler import load_spec
from assembler.data import EncodedSample, PackedBatchLoader, build_loader
from assembler.data.chat_template import next_token_labels

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
PAD, IMAGE = 248044, 248056


def _loader(workers: int, **overrides) -> PackedBatchLoader:
    rng = random.Random(0)
    samples = []
    for index in range(40):
        ids = [1000 + index] * rng.randint(3, 30)
        samples.append(EncodedSample(ids, next_token_labels(ids, [True] * len(ids)), [], [], f"s{index}"))
    args = dict(budget=64, seed=0, pad_token_id=PAD, image_token_id=IMAGE, spatial_merge_size=2, workers=workers)
    return PackedBatchLoader(samples, **{**args, **overrides})


def _assert_same_batches(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        for key in ("input_ids", "shift_labels", "pixel_values", "image_grid_thw"):
            assert (a[key] is None) == (b[key] is None) and (a[key] is None or torch.equal(a[key], b[key])), key
        for field in ("cu_seqlens", "seq_idx", "position_ids"):
            assert torch.equal(getattr(a["packing"], field), getattr(b["packing"], field)), field
        assert a["packing"].max_seqlen == b["packing"].max_seqlen


def _take(batches, n: int) -> list[dict]:
    return [next(batches) for _ in range(n)]


def test_workers_collate_the_tiny_specs_rows_with_their_images_in_order():
    spec = load_spec(TINY)
    in_process = build_loader(load_spec(TINY, ["data.workers=0"]))
    rows = len(in_process.rows_of_epoch(0))
    expected = _take(iter(in_process), rows + 3)  # across the first epoch boundary
    assert any(batch["pixel_values"] is not None for batch in expected)
    assert spec.data["workers"] == 0  # the default: in process
    with_workers = build_loader(load_spec(TINY, ["data.workers=2"]))
    _assert_same_batches(_take(iter(with_workers), rows + 3), expected)
    assert with_workers.state_dict() == in_process.state_dict()


@pytest.mark.parametrize("world_size, rank", [(1, 0), (2, 1)])
def test_any_worker_count_gives_the_same_batches_and_position(world_size, rank):
    expected_loader = _loader(0, world_size=world_size, rank=rank)
    expected = _take(iter(expected_loader), 9)
    for workers in (1, 2):
        loader = _loader(workers, world_size=world_size, rank=rank)
        _assert_same_batches(_take(iter(loader), 9), expected)
        # Workers have prefetched rows beyond the ninth; the position is that of the ninth.
        assert loader.state_dict() == expected_loader.state_dict()


def test_a_resumed_worker_fed_loader_continues_the_stream():
    uninterrupted = _take(iter(_loader(0)), 17)
    first = _loader(2)
    _take(iter(first), 7)
    resumed = _loader(2)
    resumed.load_state_dict(first.state_dict())
    _assert_same_batches(_take(iter(resumed), 10), uninterrupted[7:])


def test_assemble_train_with_workers_trains_on_the_same_batches(tmp_path):
    """The training loop takes its batches from the workers: the same losses, step for step, and a
    resumed run (its data position saved while rows were prefetched) continues them."""
    import io

    from assembler.train.loop import train

    small = ["train.steps=4", "train.tokens_per_step=128", "data.packing.length=128", "train.log_every=1",
             "train.export_hf=false", "train.checkpoint.every=2"]
    in_process = train(load_spec(TINY, small), output_dir=tmp_path / "w0", stream=io.StringIO()).losses
    halfway = train(load_spec(TINY, [*small, "train.steps=2", "data.workers=2"]), output_dir=tmp_path / "w2", stream=io.StringIO())
    resumed = train(load_spec(TINY, [*small, "data.workers=2"]), output_dir=tmp_path / "w2", stream=io.StringIO()).losses
    assert halfway.losses == {1: in_process[1], 2: in_process[2]}
    assert resumed == {3: in_process[3], 4: in_process[4]}
