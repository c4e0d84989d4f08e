"""The loop's loss normalisation: with gradient accumulation, a step's loss is the sum of per-token
losses over all its micro-batches divided by their total count of target tokens (what one big batch
gives), not the mean of per-micro-batch means."""

import io
import json

import torch

from assembler import load_spec
from assembler.model.build import build_model
from assembler.data import build_loader
from assembler.train.loop import train
from assembler.train.step import IGNORE_INDEX
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["train.steps=1", "train.grad_accumulation=3", "train.tokens_per_step=64", "data.packing.length=64",
         "train.log_every=1", "train.export_hf=false"]


def test_accumulated_loss_is_normalised_by_all_target_tokens(tmp_path):
    # Plain-text records of very different lengths, so micro-batches differ in target counts.
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": "red circle " * n}) + "\n" for n in (2, 25, 4, 14, 7, 28, 3, 10)))
    spec = load_spec(ROOT / "specs" / "qwen3_5_tiny.yaml", SMALL + [f"data.sources=[{{path: {source}}}]"])
    result = train(spec, output_dir=tmp_path / "run", stream=io.StringIO())

    loader = build_loader(spec)
    micro_batches = [next(loader) for _ in range(3)]
    model = build_model(spec, seed=spec.train["seed"])
    counts = [int((b["shift_labels"] != IGNORE_INDEX).sum()) for b in micro_batches]
    assert len(set(counts)) > 1  # otherwise both normalisations agree and this test shows nothing
    total = torch.tensor(sum(counts))
    with torch.no_grad():
        expected = sum(model(**b, num_items_in_batch=total).loss for b in micro_batches)
        mean_of_means = sum(model(**b).loss for b in micro_batches) / 3
    assert result.losses[1] == float(expected)
    assert abs(float(mean_of_means) - float(expected)) > 1e-4
