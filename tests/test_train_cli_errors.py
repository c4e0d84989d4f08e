"""`assemble train` on bad input: a clear message, exit code 2, no traceback.

Each case of the issue: a malformed JSONL line (file:line), the same line skipped and counted under
`data.on_error: skip`, a missing image, an empty dataset, and a NaN loss (training stops before the
bad update and the last good checkpoint stays the latest).
"""

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from assembler import load_spec
from assembler.model.build import build_model
from assembler.train.checkpoint import COMPLETE_MARKER, latest_checkpoint, load_model_weights
from blocks.vision_language_model import VisionLanguageModel
from assembler.cli.train import train_command

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
IMAGE = ROOT / "specs" / "data" / "tiny" / "images" / "0000.png"
# Few short steps: these runs exist to reach the error, not to learn.
FAST = ["-o", "train.tokens_per_step=64", "-o", "data.packing.length=64", "-o", "train.log_every=1", "-o", "train.export_hf=false"]


def _chat(image: Path | str | None, answer: str = "A red circle.") -> str:
    content = [{"type": "text", "text": "Describe the image."}]
    if image is not None:
        content.insert(0, {"type": "image", "path": str(image)})
    return json.dumps({"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]})


def _run(tmp_path: Path, lines: list[str], *extra: str):
    source = tmp_path / "data.jsonl"
    source.write_text("".join(line + "\n" for line in lines))
    args = [str(TINY), *FAST, "-o", f"data.sources=[{{path: {source}}}]", "--output-dir", str(tmp_path / "run"), *extra]
    result = CliRunner().invoke(train_command, args)
    return result, source


def _assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_malformed_line_names_file_and_line(tmp_path):
    result, source = _run(tmp_path, [_chat(IMAGE), "{not json", _chat(IMAGE)], "-o", "train.steps=1")
    _assert_user_error(result, f"{source}:2", "not valid JSON", "data.on_error: skip")


def test_malformed_line_skipped_and_counted_with_on_error_skip(tmp_path):
    lines = [_chat(IMAGE), "{not json", '{"messages": []}', _chat(IMAGE, "A blue square.")]
    result, _ = _run(tmp_path, lines, "-o", "train.steps=1", "-o", "data.on_error=skip")
    assert result.exit_code == 0, result.output
    assert "2 bad records skipped" in result.output


def test_missing_image_is_named(tmp_path):
    missing = tmp_path / "images" / "nowhere.png"
    result, _ = _run(tmp_path, [_chat(IMAGE), _chat(missing)], "-o", "train.steps=1")
    _assert_user_error(result, str(missing), "not found")


def test_empty_dataset(tmp_path):
    result, source = _run(tmp_path, ["", "   "], "-o", "train.steps=1")
    _assert_user_error(result, "dataset is empty", str(source))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_forward = VisionLanguageModel.forward
    calls = {"n": 0}

    def forward_turning_nan_at_step_3(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(VisionLanguageModel, "forward", forward_turning_nan_at_step_3)
    lines = [_chat(IMAGE, f"A red {shape}.") for shape in ("circle", "square", "triangle", "star")]
    result, _ = _run(tmp_path, lines, "-o", "train.steps=4", "-o", "train.checkpoint.every=2")
    checkpoints = tmp_path / "run" / "checkpoints"
    _assert_user_error(result, "step 3", "nan", str(checkpoints / "step_000002"), "train.optimizer.lr")

    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000002"]
    assert latest_checkpoint(checkpoints) == checkpoints / "step_000002"
    assert (checkpoints / "step_000002" / COMPLETE_MARKER).is_file()
    model = build_model(load_spec(TINY), seed=1)
    load_model_weights(checkpoints / "step_000002", model)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) for r in records)


def test_bad_override_is_a_user_error(tmp_path):
    result = CliRunner().invoke(train_command, [str(TINY), "-o", "train.stepz=3", "--output-dir", str(tmp_path)])
    _assert_user_error(result, "stepz")


def test_resume_from_a_path_without_checkpoint(tmp_path):
    result = CliRunner().invoke(train_command, [str(TINY), *FAST, "--resume", str(tmp_path / "nope"), "--output-dir", str(tmp_path)])
    _assert_user_error(result, "--resume", "nope")


def test_a_bad_record_met_mid_run_keeps_the_steps_done_and_skip_resumes_from_them(tmp_path):
    """Streamed data is read a window at a time, so a bad record in a later window stops the run
    mid-way: the steps trained are saved (even with no checkpoint due) and the message names the
    line; the same command with data.on_error: skip resumes from them and finishes."""
    from assembler.data import build_loader

    # Three chunks of records, one window each, a caption with an image every tenth record.
    lines = [_chat(IMAGE if i % 10 == 0 else None, f"Answer {i}.") for i in range(600)]
    source = tmp_path / "data.jsonl"
    source.write_text("".join(line + "\n" for line in lines))
    args = [str(TINY), "-o", "train.tokens_per_step=1024", "-o", "data.packing.length=1024", "-o", "data.packing.window=256",
            "-o", "train.log_every=1", "-o", "train.export_hf=false", "-o", "train.checkpoint.every=100",
            "-o", f"data.sources=[{{path: {source}}}]", "--output-dir", str(tmp_path / "run")]
    loader = build_loader(load_spec(TINY, [arg for arg in args[1:-2] if arg != "-o"]))
    rows_before = len(loader.plan(0, 0).rows)  # epoch 0's first window is good
    bad = loader.windows.epoch_chunks(0, seed=loader.seed)[1][0].first + 3  # a line of its second window
    lines[bad - 1] = "{not json"
    source.write_text("".join(line + "\n" for line in lines))
    steps = rows_before + 2
    args += ["-o", f"train.steps={steps}"]

    stopped = CliRunner().invoke(train_command, args)
    _assert_user_error(stopped, f"step {rows_before + 1}: {source}:{bad}: not valid JSON", f"steps 1-{rows_before} are saved in")
    saved = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert saved is not None and saved.name.endswith(f"{rows_before:06d}") and (saved / COMPLETE_MARKER).exists()

    resumed = CliRunner().invoke(train_command, [*args, "-o", "data.on_error=skip"])
    assert resumed.exit_code == 0, resumed.output
    assert f"at step {rows_before}" in resumed.output and f"step {steps}/{steps}" in resumed.output
