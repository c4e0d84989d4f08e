"""Bad inputs a user meets exit 2 with what, where and what to do, never a traceback (issue 12, defect 6)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli import assemble

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "reference" / "qwen3_5_4b_config.json"


def _run(*args: str):
    result = CliRunner().invoke(assemble, [*map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_import_hf_non_utf8_config(tmp_path):
    raw = REFERENCE.read_bytes().replace(b'"qwen3_5"', '"qwen3_5 caf\u00e9"'.encode("latin-1"), 1)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_bytes(raw)
    result = _run("import-hf", tmp_path / "model", "-o", tmp_path / "spec.yaml")
    assert result.exit_code == 2, result.output
    assert "config.json:" in result.output and "not UTF-8" in result.output and "re-save the file as UTF-8" in result.output
    assert not (tmp_path / "spec.yaml").exists()


def test_import_hf_full_attention_interval_zero(tmp_path):
    config = json.loads(REFERENCE.read_text())
    config["text_config"].pop("layer_types", None)
    config["text_config"]["full_attention_interval"] = 0
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = _run("import-hf", tmp_path / "config.json", "-o", tmp_path / "spec.yaml")
    assert result.exit_code == 2, result.output
    assert "text_config.full_attention_interval: 0 is not a layer interval" in result.output


def test_train_on_latin1_jsonl(tmp_path):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes('{"text": "caf\u00e9 au lait"}\n'.encode("latin-1"))
    result = _run("train", ROOT / "specs" / "qwen3_5_tiny.yaml", "-o", f"data.sources=[{{path: {data}}}]",
                  "--output-dir", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert f"{data}:1: not UTF-8 text" in result.output
