"""`data.sources[].weight`: a mixture's share per epoch. Each sample of a source weighted w is in
every epoch floor(w) times, plus round(frac(w)·n) of its n samples drawn anew each epoch; weights of
1 (the default) leave the plan exactly as without weights."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from assembler import load_spec
from assembler.data import EncodedSample, PackedBatchLoader, build_loader
from assembler.data.chat_template import next_token_labels
from assembler.spec.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
PAD, IMAGE = 248044, 248056
A, B = 30, 20  # samples of source 0 and source 1


def _loader(weights=None, **overrides) -> PackedBatchLoader:
    rng = random.Random(0)
    samples = []
    for index in range(A + B):
        ids = [1000 + index] * rng.randint(3, 30)  # the first token names the sample
        samples.append(EncodedSample(ids, next_token_labels(ids, [True] * len(ids)), [], [], f"s{index}"))
    args = dict(budget=64, seed=0, pad_token_id=PAD, image_token_id=IMAGE, spatial_merge_size=2,
                sources=[0] * A + [1] * B, weights=weights)
    return PackedBatchLoader(samples, **{**args, **overrides})


def _epoch_counts(loader: PackedBatchLoader, epoch: int) -> Counter:
    return Counter(i for row in loader.rows_of_epoch(epoch) for i in row)


def test_weights_of_one_leave_the_plan_as_without_weights():
    plain = _loader(weights=None, sources=None)
    ones = _loader(weights=[1.0, 1.0])
    for epoch in range(3):
        assert ones.rows_of_epoch(epoch) == plain.rows_of_epoch(epoch)


def test_a_weight_of_two_doubles_a_source_and_a_half_takes_a_new_half_each_epoch():
    loader = _loader(weights=[2.0, 0.5])
    halves = []
    for epoch in range(3):
        counts = _epoch_counts(loader, epoch)
        assert all(counts[i] == 2 for i in range(A))  # every sample of source 0, twice
        drawn = {i for i in range(A, A + B) if counts[i]}
        assert len(drawn) == B // 2 and all(counts[i] == 1 for i in drawn)
        halves.append(drawn)
    assert halves[0] != halves[1] != halves[2]  # a different half each epoch
    assert _loader(weights=[2.0, 0.5]).rows_of_epoch(1) == loader.rows_of_epoch(1)  # seeded: the same plan again
    stats = loader.epoch_stats(0)
    assert stats.real_tokens == sum(len(loader.samples[i]) * n for i, n in _epoch_counts(loader, 0).items())


def test_a_weighted_stream_resumes_exactly_and_refuses_other_weights():
    straight = _loader(weights=[1.5, 0.25])
    expected = [next(straight) for _ in range(25)]  # across the first epoch's end
    first = _loader(weights=[1.5, 0.25])
    for _ in range(11):
        next(first)
    resumed = _loader(weights=[1.5, 0.25])
    resumed.load_state_dict(first.state_dict())
    for want in expected[11:]:
        got = next(resumed)
        assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["shift_labels"], want["shift_labels"])
    with pytest.raises(Exception, match="weights"):
        _loader(weights=[1.0, 1.0]).load_state_dict(first.state_dict())


def test_the_spec_weighs_its_sources_and_refuses_a_weight_of_zero(tmp_path):
    data = ROOT / "specs" / "data" / "tiny"
    spec = load_spec(TINY, [f"data.sources=[{{path: {data / 'captions.jsonl'}}}, {{path: {data / 'chats.jsonl'}, weight: 3}}]"])
    loader = build_loader(spec)
    lines = {name: sum(1 for line in (data / name).read_text().splitlines() if line.strip()) for name in ("captions.jsonl", "chats.jsonl")}
    counts = _epoch_counts(loader, 0)  # "file:line" -> draws in epoch 0
    drawn = Counter((key.rsplit(":", 1)[0].rsplit("/", 1)[-1], n) for key, n in counts.items())
    assert drawn == {("captions.jsonl", 1): lines["captions.jsonl"], ("chats.jsonl", 3): lines["chats.jsonl"]}
    with pytest.raises(SpecError, match=r"data\.sources\[0\]\.weight"):
        load_spec(TINY, [f"data.sources=[{{path: {data / 'chats.jsonl'}, weight: 0}}]"])


def test_a_file_listed_twice_is_refused_with_the_weight_to_use_instead():
    from assembler.data.records import DataError

    chats = ROOT / "specs" / "data" / "tiny" / "chats.jsonl"
    spec = load_spec(TINY, [f"data.sources=[{{path: {chats}}}, {{path: {chats}}}]"])
    with pytest.raises(DataError, match=r"data\.sources\[1\]: .* is also data\.sources\[0\]; .*weight"):
        build_loader(spec)  # refused before any record is read
