"""The `model.mtp` spec section: defaults, refusals (what, where, what to do, exit 2) and its HF config."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from assembler import load_spec
from assembler.hf.config import hf_config_from_spec
from assembler.spec.errors import SpecError
from cli import assemble

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"


def _validate(*overrides: str):
    args = ["validate", str(TINY)] + [item for override in overrides for item in ("-o", override)]
    return CliRunner().invoke(assemble, args)


def test_an_empty_section_takes_the_schema_defaults():
    spec = load_spec(TINY, ["model.mtp={}"])
    assert spec.model["mtp"] == {"num_hidden_layers": 1, "layer_type": "full", "loss_weight": 0.1}
    assert "mtp" not in load_spec(TINY).model  # absent: no head


@pytest.mark.parametrize("override, where, what", [
    ("model.mtp={layer_type: ful}", "model.mtp.layer_type", "did you mean 'full'"),
    ("model.mtp={num_layers: 1}", "model.mtp.num_layers", "renamed to `num_hidden_layers`"),
    ("model.mtp={num_hidden_layers: 2}", "model.mtp.num_hidden_layers", "2 is not one of 1"),
    ("model.mtp={loss_weight: -1.0}", "model.mtp.loss_weight", "below the minimum 0"),
])
def test_bad_sections_exit_2_naming_the_field(override, where, what):
    result = _validate(override)
    assert result.exit_code == 2, result.output
    assert f"{where}:" in result.output and what in result.output, result.output


def test_a_family_without_a_head_refuses_the_section():
    result = CliRunner().invoke(assemble, ["validate", str(ROOT / "specs" / "qwen3_tiny.yaml"), "-o", "model.mtp={}"])
    assert result.exit_code == 2
    assert "model.mtp: the qwen3 family builds no multi-token-prediction head" in result.output
    assert "remove model.mtp" in result.output


def test_the_hf_config_names_the_head():
    text = hf_config_from_spec(load_spec(TINY, ["model.mtp={}"]))["text_config"]
    assert (text["mtp_num_hidden_layers"], text["mtp_use_dedicated_embeddings"]) == (1, False)
    assert "mtp_num_hidden_layers" not in hf_config_from_spec(load_spec(TINY))["text_config"]


def test_an_mtp_layer_released_checkpoints_cannot_hold_is_refused_at_export():
    spec = load_spec(TINY, ["model.mtp={layer_type: linear}"])  # trains, but no Qwen3.5 config describes it
    with pytest.raises(SpecError) as error:
        hf_config_from_spec(spec)
    assert "model.mtp.layer_type" in str(error.value) and "gated-attention" in str(error.value)
