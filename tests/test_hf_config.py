"""Spec <-> HF Qwen3.5 config.json: exact round trips, transformers accepts the output, refusals name the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from assembler import SpecError, hf_config_from_spec, load_spec, spec_from_hf_config
from assembler.families.qwen3_5 import hf_config as hf  # the family's table of transformers defaults

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).parent / "reference" / "qwen3_5_4b_config.json"  # copy of the shared reference config
FLAGSHIP = ROOT / "specs" / "qwen3_5_4b.yaml"
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


def test_flagship_spec_writes_the_reference_config(reference):
    generated = hf_config_from_spec(load_spec(FLAGSHIP))
    # equal as a whole, so equal on every architecture field (and on key order, for diffs)
    assert generated == reference
    assert list(generated) == list(reference)
    assert list(generated["text_config"]) == list(reference["text_config"])


def test_reference_config_imports_as_the_flagship_model(reference):
    assert spec_from_hf_config(REFERENCE).model == load_spec(FLAGSHIP).model
    assert spec_from_hf_config(reference).model == load_spec(FLAGSHIP).model
    # from a model folder holding config.json too
    assert spec_from_hf_config(REFERENCE).name == "qwen3_5_4b_config"


def test_model_folder_is_read(tmp_path, reference):
    (tmp_path / "Qwen3.5-4B").mkdir()
    (tmp_path / "Qwen3.5-4B" / "config.json").write_text(json.dumps(reference))
    spec = spec_from_hf_config(tmp_path / "Qwen3.5-4B")
    assert spec.name == "qwen3_5_4b" and spec.model == load_spec(FLAGSHIP).model


def test_tiny_spec_round_trips():
    tiny = load_spec(TINY)
    assert spec_from_hf_config(hf_config_from_spec(tiny)).model == tiny.model


def test_transformers_accepts_the_generated_config_and_its_to_dict_imports_back():
    from transformers import Qwen3_5Config

    for spec_file in (FLAGSHIP, TINY):
        spec = load_spec(spec_file)
        config = Qwen3_5Config(**hf_config_from_spec(spec))
        assert config.text_config.layer_types[3] == "full_attention"
        assert config.vision_config.out_hidden_size == spec.model["text"]["hidden_size"]
        # transformers' own to_dict() (bookkeeping fields and all) imports to the same model
        assert spec_from_hf_config(config.to_dict()).model == spec.model


def test_hf_defaults_table_matches_transformers():
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5Config, Qwen3_5TextConfig, Qwen3_5VisionConfig

    text, vision, top = Qwen3_5TextConfig(), Qwen3_5VisionConfig(), Qwen3_5Config()
    assert {k: getattr(text, k) for k in hf.HF_TEXT_DEFAULTS} == hf.HF_TEXT_DEFAULTS
    assert {k: getattr(vision, k) for k in hf.HF_VISION_DEFAULTS} == hf.HF_VISION_DEFAULTS
    assert {k: getattr(top, k) for k in hf.HF_TOKEN_DEFAULTS} == hf.HF_TOKEN_DEFAULTS
    assert text.rope_parameters["rope_theta"] == hf.HF_ROPE_DEFAULTS["rope_theta"]
    assert text.rope_parameters["partial_rotary_factor"] == hf.HF_ROPE_DEFAULTS["partial_rotary_factor"]
    assert vision.rope_parameters["rope_theta"] == hf.HF_VISION_ROPE_THETA


def test_hub_style_config_with_legacy_and_extra_fields(reference):
    """Real hub configs carry MTP/inference hints and may use full_attention_interval or old rope keys."""
    config = copy.deepcopy(reference)
    text = config["text_config"]
    del text["layer_types"]
    text["full_attention_interval"] = 4
    text.update(attn_output_gate=True, mtp_num_hidden_layers=1, mtp_use_dedicated_embeddings=False, mamba_ssm_dtype="float32")
    rope = text.pop("rope_parameters")
    text["rope_theta"] = rope.pop("rope_theta")
    text["rope_scaling"] = rope
    config["transformers_version"] = "4.57.0"
    assert spec_from_hf_config(config).model == load_spec(FLAGSHIP).model


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda c: c["text_config"].update(num_experts=64), "text_config.num_experts"),
        (lambda c: c.update(model_type="qwen3_5_moe"), "model_type"),
        (lambda c: c["text_config"].update(attention_bias=True), "text_config.attention_bias"),
        (lambda c: c["text_config"].update(hidden_act="gelu"), "text_config.hidden_act"),
        (lambda c: c["text_config"].update(attn_output_gate=False), "text_config.attn_output_gate"),
        (lambda c: c["text_config"]["layer_types"].__setitem__(5, "sliding_attention"), "text_config.layer_types[5]"),
        (lambda c: c["text_config"]["rope_parameters"].update(rope_type="yarn"), "text_config.rope_parameters.rope_type"),
        (lambda c: c["vision_config"].update(deepstack_visual_indexes=[5, 11]), "vision_config.deepstack_visual_indexes"),
        (lambda c: c["vision_config"].update(hidden_act="silu"), "vision_config.hidden_act"),
        (lambda c: c["text_config"].update(sliding_window=4096), "text_config.sliding_window"),
        (lambda c: c.pop("vision_config"), "vision_config"),
        (lambda c: c["text_config"].update(tie_word_embeddings=False), "text_config.tie_word_embeddings"),
    ],
)
def test_unrepresentable_configs_are_refused_by_field(reference, edit, field):
    config = copy.deepcopy(reference)
    edit(config)
    with pytest.raises(SpecError) as caught:
        spec_from_hf_config(config)
    assert any(problem.path == field for problem in caught.value.problems), str(caught.value)


def test_import_that_fails_validation_names_the_config_file(tmp_path, reference):
    config = copy.deepcopy(reference)
    config["text_config"]["num_key_value_heads"] = 3
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(SpecError) as caught:
        spec_from_hf_config(path)
    assert f"{path}: model.text.layer_types.full.mixer.num_key_value_heads: 3 does not divide num_attention_heads 16" in str(caught.value)


def test_spec_without_hf_equivalent_is_refused():
    spec = load_spec(TINY, ["model.text.norms.layer=default", "model.text.rope.mrope_interleaved=false"])
    with pytest.raises(SpecError) as caught:
        hf_config_from_spec(spec)
    message = str(caught.value)
    assert "model.text.norms.layer: 'default' has no HF Qwen3.5 equivalent" in message
    assert "model.text.rope.mrope_interleaved" in message


def test_bad_config_files(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        spec_from_hf_config(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{\n  \"a\": \n}")
    with pytest.raises(SpecError, match=r"config.json:3:1: JSON syntax error"):
        spec_from_hf_config(tmp_path)
