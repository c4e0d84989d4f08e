"""The loader: deterministic from the seed, epoch-wise shuffled, exact resume from state_dict,
rank sharding, and the tiny spec's data end to end."""

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from assembler.data import DataError, EncodedSample, PackedBatchLoader, build_loader, build_loader_from_sections
from assembler.data.chat_template import next_token_labels

ROOT = Path(__file__).resolve().parents[1]
PAD, IMAGE = 248044, 248056


def _samples(n: int = 40, seed: int = 0) -> list[EncodedSample]:
    rng = random.Random(seed)
    samples = []
    for index in range(n):
        ids = [1000 + index] * rng.randint(3, 30)  # the first token names the sample
        samples.append(EncodedSample(ids, next_token_labels(ids, [True] * len(ids)), [], [], f"s{index}"))
    return samples


def _loader(samples=None, **overrides) -> PackedBatchLoader:
    args = dict(budget=64, seed=0, pad_token_id=PAD, image_token_id=IMAGE, spatial_merge_size=2)
    return PackedBatchLoader(samples or _samples(), **{**args, **overrides})


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def _same(a, b):
    return all(torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["shift_labels"], y["shift_labels"])
               and torch.equal(x["packing"].position_ids, y["packing"].position_ids) for x, y in zip(a, b, strict=True))


def _documents(batch) -> list[int]:
    starts = batch["packing"].cu_seqlens[:-1].tolist()
    return [int(batch["input_ids"][0, s]) - 1000 for s in starts if int(batch["input_ids"][0, s]) != PAD]


def test_same_seed_same_batches_and_other_seed_other_order():
    rows = len(_loader().rows_of_epoch(0))
    assert _same(_take(_loader(), 2 * rows + 3), _take(_loader(), 2 * rows + 3))
    assert not _same(_take(_loader(), rows), _take(_loader(seed=1), rows))


def test_every_epoch_is_a_new_shuffle_of_every_sample():
    loader = _loader()
    rows = len(loader.rows_of_epoch(0))
    epochs = [[d for b in _take(loader, len(loader.rows_of_epoch(e))) for d in _documents(b)] for e in range(3)]
    assert all(sorted(epoch) == list(range(40)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert rows == len(loader.rows_of_epoch(0))
    unshuffled = _loader(shuffle=False)
    assert unshuffled.rows_of_epoch(0) == unshuffled.rows_of_epoch(1)


@pytest.mark.parametrize("steps_before", [0, 1, 5, 13])  # 13 crosses an epoch boundary
def test_exact_resume_from_state_dict(steps_before):
    straight = _loader()
    expected = _take(straight, steps_before + 8)[steps_before:]

    first = _loader()
    _take(first, steps_before)
    state = json.loads(json.dumps(first.state_dict()))  # survives a round trip through a checkpoint
    resumed = _loader()
    resumed.load_state_dict(state)
    assert _same(_take(resumed, 8), expected)


def test_resume_onto_other_data_or_settings_is_refused():
    state = _loader().state_dict()
    with pytest.raises(DataError, match="the data .* differs from the saved run's"):
        _loader(samples=_samples(seed=1)).load_state_dict(state)
    with pytest.raises(DataError, match=r"train.seed differs from the saved run.s \(seed 0, now 3\)"):
        _loader(seed=3).load_state_dict(state)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_take_every_world_size_th_row(world_size):
    single = _loader()
    rows = len(single.rows_of_epoch(0)) + len(single.rows_of_epoch(1))
    stream = _take(single, rows)
    ranks = [_loader(rank=r, world_size=world_size) for r in range(world_size)]
    steps = rows // world_size
    per_rank = [_take(loader, steps) for loader in ranks]
    interleaved = [per_rank[r][s] for s in range(steps) for r in range(world_size)]
    assert _same(interleaved, stream[: steps * world_size])
    assert len({json.dumps(loader.state_dict()) for loader in ranks}) == 1  # one position for all ranks


@pytest.fixture(scope="module")
def tokenizer():
    from assembler.data import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture(scope="module")
def tiny_spec():
    return yaml.safe_load((ROOT / "specs" / "qwen3_5_tiny.yaml").read_text())


def _tiny_loader(spec, data=None, **kwargs):
    return build_loader_from_sections(
        data or spec["data"], base_dir=ROOT / "specs", tokens_per_step=spec["train"]["tokens_per_step"],
        seed=spec["train"]["seed"], tokens=spec["model"]["tokens"], vision=spec["model"]["vision"],
        vocab_size=spec["model"]["text"]["vocab_size"], **kwargs,
    )


def test_tiny_spec_data_end_to_end(tiny_spec, tokenizer):
    from assembler.spec.sections import SpecSettings

    class LoadedSpec:  # what build_loader reads from a loaded spec
        settings = SpecSettings.of(tiny_spec)
        source = ROOT / "specs" / "qwen3_5_tiny.yaml"

    loader = build_loader(LoadedSpec(), tokenizer=tokenizer)
    stats = loader.epoch_stats(0)
    assert stats.samples == 288 + 12 + 4 and stats.skipped == stats.truncated == stats.dropped == 0
    assert 0.8 < stats.efficiency <= 1.0
    budget = tiny_spec["train"]["tokens_per_step"]
    for _ in range(3):
        batch = next(loader)
        assert batch["input_ids"].shape == (1, budget)
        ctx = batch["packing"]
        assert ctx.cu_seqlens[-1] == budget and ctx.position_ids.shape == (3, 1, budget)
        n_images = int(batch["image_grid_thw"].shape[0])
        assert int((batch["input_ids"] == IMAGE).sum()) == n_images * 4  # 64x64 -> 4 merged tokens
        assert batch["pixel_values"].shape == (n_images * 16, 1536)
        assert (batch["shift_labels"] != -100).sum() > 0


def test_tiny_spec_settings_errors(tiny_spec, tokenizer, tmp_path):
    budget = tiny_spec["train"]["tokens_per_step"]
    too_long = budget * 2
    with pytest.raises(DataError, match=f"data.packing.length {too_long} is larger than train.tokens_per_step {budget}"):
        _tiny_loader(tiny_spec, {**tiny_spec["data"], "packing": {"length": too_long}})
    (tmp_path / "empty.jsonl").write_text("\n")
    # Streamed: what is wrong inside the records shows when the first window is planned.
    with pytest.raises(DataError, match="the dataset is empty"):
        next(_tiny_loader(tiny_spec, {**tiny_spec["data"], "sources": [{"path": str(tmp_path / "empty.jsonl")}]}, tokenizer=tokenizer))
    with pytest.raises(DataError, match="model has no vision tower"):
        next(build_loader_from_sections(tiny_spec["data"], base_dir=ROOT / "specs", tokens_per_step=budget, seed=0,
                                        tokens=tiny_spec["model"]["tokens"], vision=None, tokenizer=tokenizer))


def test_resume_on_another_world_size_continues_the_global_stream():
    single = _loader()
    stream = _take(single, 9)
    first = _loader()
    _take(first, 3)
    state = first.state_dict()
    ranks = [_loader(rank=r, world_size=2) for r in range(2)]
    for loader in ranks:
        loader.load_state_dict(state)
    steps = [_take(loader, 3) for loader in ranks]
    assert _same([steps[r][s] for s in range(3) for r in range(2)], stream[3:9])
