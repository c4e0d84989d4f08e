"""What `assemble train` checks before it writes or allocates anything (issue 25): no data, a step
that cannot fit in memory, a missing init folder — exit 2 with what to change, and no run folder
left behind by a run that stops before its first step; `assemble validate` warns of the same."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from assembler import load_spec
from assembler.train.memory_estimate import estimate_step_memory
from cli import assemble

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
FLAGSHIP = ROOT / "specs" / "qwen3_5_4b.yaml"
CHATS = ROOT / "specs" / "data" / "tiny" / "chats.jsonl"
LORA_PARAMETERS = 24_160  # README: the tiny spec's rank-4 adapters, "24,160 trainable of 16,193,800"
TINY_PARAMETERS = 16_193_800 - LORA_PARAMETERS
GIB = 2**30


def _train(*args: str):
    return CliRunner().invoke(assemble, ["train", *map(str, args)])


def test_no_data_is_refused_before_the_run_folder_exists(tmp_path):
    """On 9cbf307 this left runs/qwen3_5_4b/ with an empty metrics.jsonl behind."""
    result = _train(FLAGSHIP, "--output-dir", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "error: data.sources is empty" in result.stderr and "-o 'data.sources=[{path:" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_step_that_cannot_fit_is_refused_naming_what_to_change(tmp_path):
    """A million-token row of the 4B: its logits alone are terabytes, on any machine's memory."""
    result = _train(FLAGSHIP, "-o", f"data.sources=[{{path: {CHATS}}}]", "-o", "train.tokens_per_step=1000000",
                    "--output-dir", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "error: one training step needs at least" in result.stderr and "GiB available" in result.stderr
    for remedy in ("train LoRA adapters", "-o train.dtype=bfloat16", "lower train.tokens_per_step (now 1000000"):
        assert remedy in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_missing_init_folder_is_refused_up_front(tmp_path):
    result = _train(TINY, "-o", f"train.init_from={tmp_path / 'nowhere'}", "--output-dir", tmp_path / "run")
    assert result.exit_code == 2 and f"train.init_from: {tmp_path / 'nowhere'} is not a folder" in result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_data_in_the_first_window_leaves_no_run_folder(tmp_path):
    source = tmp_path / "data.jsonl"
    source.write_text("{not json\n")
    result = _train(TINY, "-o", f"data.sources=[{{path: {source}}}]", "-o", "train.steps=1", "--output-dir", tmp_path / "run")
    assert result.exit_code == 2 and f"{source}:1" in result.stderr
    assert not (tmp_path / "run").exists()
    # a folder that was there before is left as it was
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert _train(TINY, "-o", f"data.sources=[{{path: {source}}}]", "--output-dir", tmp_path / "run").exit_code == 2
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_the_memory_estimate_counts_weights_gradients_and_adamw_states():
    """fp32: 4 bytes a weight, 4 a gradient, 8 of AdamW states; LoRA: the bf16 base trains nothing."""
    spec = load_spec(TINY)
    memory = estimate_step_memory(spec, torch.device("cpu"))
    assert (memory.weights, memory.gradients, memory.optimizer) == (4 * TINY_PARAMETERS, 4 * TINY_PARAMETERS, 8 * TINY_PARAMETERS)
    logits = 256 * 248320 * (4 + 4)  # fp32 logits and their fp32 copy in the loss, 256 tokens
    assert memory.logits == logits and memory.activations > logits
    adapters = "train.adapters={method: lora, rank: 4, alpha: 8, targets: ['*'], dtype: float32}"
    lora = estimate_step_memory(load_spec(TINY, [adapters, "train.dtype=bfloat16"]), torch.device("cpu"))
    trainable = LORA_PARAMETERS
    assert lora.gradients == 4 * trainable and lora.optimizer == 8 * trainable
    assert lora.weights == 2 * TINY_PARAMETERS + 4 * trainable
    assert estimate_step_memory(load_spec(TINY, ["train.tokens_per_step=512"]), torch.device("cpu")).logits == 2 * logits


def test_validate_warns_when_a_spec_cannot_train_as_it_stands():
    result = CliRunner().invoke(assemble, ["validate", str(FLAGSHIP)])
    assert result.exit_code == 0 and result.stdout.startswith("OK ")
    assert f"warning: {FLAGSHIP}: data.sources is empty" in result.stderr
    lora = CliRunner().invoke(assemble, ["validate", str(TINY), "-o", "train.adapters={method: lora}"])
    assert lora.exit_code == 0 and "random-init base (train.init_from is null)" in lora.stderr
    assert CliRunner().invoke(assemble, ["validate", str(TINY)]).stderr == ""


def test_a_shorter_run_in_a_finished_run_folder_is_told_how_to_start_anew(tmp_path):
    """After the demo (120 steps), `-o train.steps=10` was refused with only "set train.steps to at
    least 120", as if the user wanted that run continued."""
    import pytest

    from assembler.train.run_dir import RunFolderError, resume_changes

    saved = tmp_path / "resolved_spec.yaml"
    saved.write_text(load_spec(TINY).to_yaml())
    with pytest.raises(RunFolderError) as refused:
        resume_changes(saved, load_spec(TINY, ["train.steps=10"]).to_yaml(), step=120)
    message = str(refused.value)
    assert "set train.steps to at least 120" in message
    assert "--output-dir DIR" in message and "-o name=NEW" in message


def test_a_step_that_runs_out_of_memory_anyway_is_a_message_not_a_traceback(tmp_path, monkeypatch):
    """The estimate is a lower bound; the 4B on the CPU used to die with `DefaultCPUAllocator: can't
    allocate memory` and a traceback, exit 1."""
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 4070572032 bytes.")

    monkeypatch.setattr("assembler.train.loop.training_step", out_of_memory)
    result = _train(TINY, "-o", "train.steps=1", "-o", "train.tokens_per_step=64", "-o", "data.packing.length=64",
                    "--output-dir", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error: out of memory (" in result.stderr and "To fit:" in result.stderr
