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


def test_import_hf_of_a_model_folder_writes_a_spec_that_fine_tunes_it(tmp_path):
    """The folder's weights are `train.init_from` (relative to the spec), the spec is named after the
    model, the family's fine-tuning settings are written; `--lora`, `--data`, `--steps` fill theirs.
    On 9cbf307 the spec had no init_from and was named after the folder (`hf`)."""
    folder = tmp_path / "models--Qwen--Qwen3.5-4B" / "snapshots" / ("0123456789abcdef" * 3)[:40]
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(REFERENCE.read_text())
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    data = tmp_path / "data" / "chats.jsonl"
    data.parent.mkdir()
    data.write_text("")
    out = tmp_path / "specs" / "ft.yaml"
    out.parent.mkdir()
    result = run("import-hf", folder, "-o", out, "--data", data, "--steps", "20")
    assert result.exit_code == 0, result.output
    spec = load_spec(out)
    assert spec.name == "qwen3_5_4b"
    assert spec.resolve_path(spec.train["init_from"]).resolve() == folder.resolve()
    assert not Path(spec.train["init_from"]).is_absolute()  # the spec moves with its folder
    assert spec.resolve_path(spec.data["sources"][0]["path"]).resolve() == data.resolve()
    assert spec.train["steps"] == 20 and spec.train["schedule"]["warmup_steps"] == 2 and spec.train["checkpoint"]["every"] == 20
    assert spec.train["optimizer"]["lr"] == 1e-5 and spec.train["adapters"] is None
    assert spec.parallel["activation_checkpointing"]["mode"] == "auto"

    lora = tmp_path / "specs" / "lora.yaml"
    assert run("import-hf", folder, "-o", lora, "--lora").exit_code == 0
    spec = load_spec(lora)
    assert spec.name == "qwen3_5_4b_lora" and spec.train["adapters"]["rank"] == 16 and spec.train["dtype"] == "bfloat16"
    assert spec.data["sources"] == [] and "no data yet" in lora.read_text()


def test_import_hf_names_a_run_export_after_its_run(tmp_path):
    export = tmp_path / "runs" / "my_run" / "hf"
    export.mkdir(parents=True)
    (export.parent / "resolved_spec.yaml").write_text("name: my_run\n")
    (export / "config.json").write_text(REFERENCE.read_text())
    result = run("import-hf", export, "-o", tmp_path / "x.yaml")
    assert result.exit_code == 0, result.output
    assert load_spec(tmp_path / "x.yaml").name == "my_run"
    assert "holds no safetensors weights" in result.output and "random init" in result.output
