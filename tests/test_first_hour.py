"""A user's first hour, end to end through the README's commands (issue 25): a transformers-made
Qwen3.5 folder -> `assemble import-hf` -> `assemble train` of the spec it wrote (full fine-tuning,
and LoRA) on the shipped tiny data -> `assemble export` -> `assemble chat --prompt` answers, as
transformers' own generate answers from the export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from cli import assemble
from tests.hf_checkpoint_fixtures import make_tiny_release_folder

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "specs" / "data" / "tiny"
IMAGE = DATA / "images" / "0000.png"
QUESTION = "How many sides does a triangle have?"
# The run's size, on import-hf's command line: 2 steps of one 128-token row each.
SMALL = ["--steps", "2", "--tokens-per-step", "128"]


def _assemble(*args) -> str:
    result = CliRunner().invoke(assemble, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return make_tiny_release_folder(tmp_path_factory.mktemp("models") / "Qwen3.5-Tiny")


def _readme_snippet() -> str:
    """The Python block of the README's "Load an export in transformers"."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme[readme.index("Load an export in transformers"):]
    return after[after.index("```python\n") + len("```python\n"):after.index("\n```\n")]


def _transformers_answer(folder: Path, question: str, max_new_tokens: int) -> str:
    """The oracle: transformers' own model, chat template and greedy generate on the export."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype="auto").eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False, enable_thinking=False)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    inputs["mm_token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fine_tune_a_local_folder_export_it_and_chat(release, tmp_path, monkeypatch, lora):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "specs" / "mine.yaml"
    spec.parent.mkdir()
    _assemble("import-hf", release, "-o", spec, "--data", DATA / "captions.jsonl", "--data", DATA / "chats.jsonl",
              *SMALL, *(["--lora"] if lora else []))
    written = yaml.safe_load(spec.read_text())
    name = "qwen3_5_tiny_lora" if lora else "qwen3_5_tiny"  # after the folder, Qwen3.5-Tiny
    assert written["name"] == name and (spec.parent / written["train"]["init_from"]).resolve() == release.resolve()

    trained = _assemble("train", spec)
    assert "done in" in trained and "warning" not in trained
    run = tmp_path / "runs" / name
    assert (run / "checkpoints" / "step_000002").is_dir() and (run / "hf" / "config.json").is_file()

    if not lora:
        _assemble("export", run, tmp_path / "exported")
        answer = _assemble("chat", tmp_path / "exported", "--prompt", QUESTION, "--max-new-tokens", "4").strip()
        assert answer == _transformers_answer(tmp_path / "exported", QUESTION, max_new_tokens=4)
        _assemble("chat", tmp_path / "exported", "--image", IMAGE, "--prompt", "Describe the image.", "--max-new-tokens", "2")
        # the README's transformers snippet runs as written, from a clone's root (its image) on this run's hf/
        (tmp_path / "specs" / "data").symlink_to(ROOT / "specs" / "data")
        exec(compile(_readme_snippet(), "README.md", "exec"), {})  # noqa: S102 (our own README)
    else:  # a run folder: its latest checkpoint is exported (adapters merged) on the way, as its own hf/ was
        answer = _assemble("chat", run, "--prompt", QUESTION, "--max-new-tokens", "4").strip()
        assert answer == _transformers_answer(run / "hf", QUESTION, max_new_tokens=4)


def test_the_shipped_tiny_lora_spec_fine_tunes_the_demo_as_the_readme_says():
    from assembler import build_model, load_spec
    from assembler.train.freeze import parameter_counts
    from assembler.train.trained_parameters import choose_trained_parameters

    spec = load_spec(ROOT / "specs" / "qwen3_5_tiny_lora.yaml")
    assert spec.resolve_path(spec.train["init_from"]).resolve() == ROOT / "runs" / "qwen3_5_tiny" / "hf"
    model = build_model(spec, device="meta")
    choose_trained_parameters(model, spec, device="meta", initialize_adapters=False)
    line = parameter_counts(model).describe()
    assert line == "parameters: 24,160 trainable of 16,193,800 (0.15%)"
    assert f"`{line}`" in (ROOT / "README.md").read_text(encoding="utf-8")
