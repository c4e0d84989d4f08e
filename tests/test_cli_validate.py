"""`assemble validate`, `assemble schema`, `assemble import-hf` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from assembler import load_spec
from assembler.spec.schema import SCHEMA_PATH
from cli import assemble

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
FLAGSHIP = ROOT / "specs" / "qwen3_5_4b.yaml"
REFERENCE = Path(__file__).parent / "reference" / "qwen3_5_4b_config.json"  # copy of the shared reference config


def run(*args: str):
    return CliRunner().invoke(assemble, [str(a) for a in args])


def test_validate_prints_one_ok_line_per_spec():
    result = run("validate", FLAGSHIP, TINY)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"OK {FLAGSHIP}: qwen3_5_4b") and "24 linear, 8 full" in lines[0]
    assert lines[1].startswith(f"OK {TINY}: qwen3_5_tiny")


def test_validate_verbose_says_where_the_family_and_each_block_come_from():
    result = run("validate", "--verbose", ROOT / "specs" / "qwen3_tiny.yaml")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert "(qwen3)" in lines[0] and "no vision tower" in lines[0]
    assert lines[1].startswith("  family qwen3: assembler.families.qwen3")
    assert lines[2].startswith("  model.text.layer_types.full.mixer.block: mixer block gated_attention: blocks.gated_attention")
    assert lines[3].startswith("  model.text.layer_types.full.mlp.block: mlp block swiglu: blocks.mlp")
    assert len(lines) == 4


def test_validate_reports_bad_specs_and_still_checks_the_rest(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodel: {}\n")
    result = run("validate", bad, TINY)
    assert result.exit_code == 2
    assert f"OK {TINY}" in result.stdout
    assert f"error: {bad}: model.text: required key is missing" in result.stderr
    assert "Traceback" not in result.output


def test_validate_overrides_and_resolved_output():
    result = run("validate", TINY, "-o", "train.steps=3", "--override", "ops.backend=fast", "--resolved")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout.split("\n", 1)[1])
    assert resolved["train"]["steps"] == 3 and resolved["ops"]["backend"] == "fast"
    assert "ops fast" in result.stdout.splitlines()[0]


def test_validate_needs_a_spec():
    result = run("validate")
    assert result.exit_code == 2 and "Missing argument" in result.output


def test_schema_prints_the_shipped_schema():
    result = run("schema")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads(SCHEMA_PATH.read_text())


def test_import_hf_writes_a_spec_with_the_schema_modeline(tmp_path):
    out = tmp_path / "specs" / "imported.yaml"
    out.parent.mkdir()
    result = run("import-hf", REFERENCE, "-o", out, "--name", "qwen3_5_4b_imported")
    assert result.exit_code == 0, result.output
    first_line = out.read_text().splitlines()[0]
    assert first_line.startswith("# yaml-language-server: $schema=")
    schema_link = first_line.split("$schema=", 1)[1]
    assert (out.parent / schema_link).resolve() == SCHEMA_PATH.resolve()
    spec = load_spec(out)
    assert spec.name == "qwen3_5_4b_imported"
    assert spec.model == load_spec(FLAGSHIP).model


def test_import_hf_refuses_to_overwrite_and_unrepresentable_configs(tmp_path):
    out = tmp_path / "x.yaml"
    out.write_text("keep me")
    result = run("import-hf", REFERENCE, "-o", out)
    assert result.exit_code == 2 and "already exists — pass --force" in result.stderr
    assert out.read_text() == "keep me"

    config = json.loads(REFERENCE.read_text())
    config["text_config"]["num_experts"] = 8
    moe = tmp_path / "moe" / "config.json"
    moe.parent.mkdir()
    moe.write_text(json.dumps(config))
    result = run("import-hf", moe.parent, "-o", tmp_path / "moe.yaml")
    assert result.exit_code == 2
    assert "text_config.num_experts: mixture-of-experts configs cannot be represented" in result.stderr
    assert not (tmp_path / "moe.yaml").exists()


def test_import_hf_missing_config_is_a_clean_error(tmp_path):
    result = run("import-hf", tmp_path / "nowhere", "-o", tmp_path / "x.yaml")
    assert result.exit_code == 2 and "no such file" in result.stderr and "Traceback" not in result.output


def test_unexpected_os_errors_of_any_command_exit_2(tmp_path):
    result = run("import-hf", REFERENCE, "-o", tmp_path / "no_such_dir" / "x.yaml")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "No such file or directory" in result.stderr
