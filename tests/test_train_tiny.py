"""The embedded default (issue 5, done-when 1, 2, 4): `assemble train specs/qwen3_5_tiny.yaml`
trains from random init on the CPU, its loss falls far, the vision path matters (captions are
likelier with their own image than with another one), and the HF export at the end loads in
transformers with the trained model's logits, bitwise.

One run of the shipped spec, exactly as the README runs it (a subprocess, the spec unchanged),
serves every test here. Tests never assert on time; the run's wall time is printed.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from assembler import load_spec
from assembler.model.build import build_model
from assembler.data import build_loader, collate_row
from assembler.data.images import ImageProcessor
from assembler.train.checkpoint import latest_checkpoint, load_model_weights

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
CAPTIONS_EVALUATED = 48  # one packed row of ~1,350 tokens: three forwards of it take seconds

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """`assemble train specs/qwen3_5_tiny.yaml` in a fresh working directory (run folder: runs/qwen3_5_tiny)."""
    cwd = tmp_path_factory.mktemp("tiny")
    code = "import sys; sys.path.insert(0, sys.argv.pop(1)); from cli import assemble; assemble()"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), "train", str(TINY)], cwd=cwd, capture_output=True, text=True, timeout=1800
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"\nassemble train {TINY.name}: {elapsed:.0f} s wall on this machine\n{result.stdout}")
    (cwd / "train_stdout.txt").write_text(result.stdout)
    return cwd / "runs" / "qwen3_5_tiny"


@pytest.fixture(scope="module")
def trained(tiny_run):
    spec = load_spec(tiny_run / "resolved_spec.yaml")
    model = build_model(spec, seed=1234)  # other weights than the run's: everything must come from the checkpoint
    load_model_weights(latest_checkpoint(tiny_run / "checkpoints"), model)
    return spec, model.eval()


def test_run_folder_and_falling_loss(tiny_run):
    spec = load_spec(TINY)
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    steps = spec.train["steps"]
    assert records[0]["step"] == 1 and records[-1]["step"] == steps
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_gib"} <= set(records[0])
    first, last = records[0]["loss"], records[-1]["loss"]
    assert first > 11.0  # ≈ ln(248320) = 12.4 from random init
    assert last < 0.25 * first, f"loss only fell from {first:.3f} to {last:.3f}"
    saved = load_spec(tiny_run / "resolved_spec.yaml")
    assert (saved.model, saved.train) == (spec.model, spec.train)
    assert latest_checkpoint(tiny_run / "checkpoints").name == f"step_{steps:06d}"
    assert (tiny_run / "hf" / "config.json").is_file()


def test_the_log_names_each_ops_backend_and_kernel(tiny_run):
    log = (tiny_run.parents[1] / "train_stdout.txt").read_text()
    assert "kernels per op:" in log
    # The tiny spec runs `auto` on a CPU: every op takes its `hf` implementation, named as such.
    assert "  attention: hf (transformers' eager attention per document;" in log
    assert "  delta_rule: hf (transformers' torch chunked gated delta rule per document)" in log


@pytest.fixture(scope="module")
def caption_row(trained):
    return _caption_row(trained[0])


def _caption_row(spec):
    """The first captions of the shipped set packed into one row, and those samples."""
    loader = build_loader(spec)
    in_file_order = sorted(loader.samples_of_epoch(0), key=lambda s: (s.source.rsplit(":", 1)[0], int(s.source.rsplit(":", 1)[1])))
    captions = [sample for sample in in_file_order if sample.images][:CAPTIONS_EVALUATED]
    assert len(captions) == CAPTIONS_EVALUATED and all(len(s.images) == 1 for s in captions)
    vision, images = spec.model["vision"], spec.data["images"]
    processor = ImageProcessor(
        patch_size=vision["patch_size"], temporal_patch_size=vision["temporal_patch_size"],
        merge_size=vision["spatial_merge_size"], min_pixels=images["min_pixels"], max_pixels=images["max_pixels"],
    )
    row = collate_row(
        captions, budget=sum(len(s) for s in captions), pad_token_id=spec.model["tokens"]["eos"],
        image_token_id=spec.model["tokens"]["image"], spatial_merge_size=vision["spatial_merge_size"],
        image_processor=processor,
    )
    return row, captions


@torch.no_grad()
def test_caption_loss_is_lower_with_the_true_image(trained, caption_row):
    spec, model = trained
    row, captions = caption_row
    # Every shipped image has the same patch grid, so moving whole images' patches shuffles them.
    assert len({tuple(grid) for grid in row["image_grid_thw"].tolist()}) == 1
    pixels = row["pixel_values"].view(len(captions), -1, row["pixel_values"].shape[-1])
    true_loss = model(**row).loss.item()
    for shift in (1, 7):  # each caption gets another sample's image
        shuffled = pixels.roll(shift, dims=0).reshape_as(row["pixel_values"])
        shuffled_loss = model(**{**row, "pixel_values": shuffled}).loss.item()
        print(f"caption loss: true image {true_loss:.4f}, images shifted by {shift}: {shuffled_loss:.4f}")
        assert true_loss < shuffled_loss - 0.05, (true_loss, shuffled_loss)


@torch.no_grad()
def test_hf_export_gives_the_trained_models_logits(trained, tiny_run, caption_row):
    transformers = pytest.importorskip("transformers")
    spec, model = trained
    reference = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(
        tiny_run / "hf", attn_implementation="eager"
    ).eval()
    assert reference.dtype == torch.float32  # the tiny spec computes in fp32, so its export is fp32
    row, captions = caption_row
    sample = captions[0]
    input_ids = torch.tensor([sample.input_ids])
    patches = row["image_grid_thw"][0].prod().item()
    pixel_values, grid = row["pixel_values"][:patches], row["image_grid_thw"][:1]
    ours = model(input_ids, pixel_values, grid, return_logits=True).logits
    theirs = reference(
        input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=grid,
        mm_token_type_ids=(input_ids == spec.model["tokens"]["image"]).int(), use_cache=False,
    ).logits
    assert ours.shape == theirs.shape == (1, len(sample.input_ids), spec.model["text"]["vocab_size"])
    assert torch.equal(ours, theirs)
