"""Every kind of spec error: the message names the place, the bad value and a fix; the CLI exits 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from assembler import load_spec_from_dict
from assembler.spec.errors import Problem, SpecError
from cli import assemble

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
FLAGSHIP = ROOT / "specs" / "qwen3_5_4b.yaml"


def validate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(assemble, ["validate", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.stderr


def write_variant(tmp_path: Path, edit, base: Path = TINY) -> Path:
    """A copy of `base` changed by `edit(dict)`, written into tmp_path."""
    data = yaml.safe_load(base.read_text())
    edit(data)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_unknown_nested_key_suggests_the_right_one(tmp_path):
    def misspell(d):
        mixer = d["model"]["text"]["layer_types"]["full"]["mixer"]
        mixer["num_kv_head"] = mixer.pop("num_key_value_heads")

    code, err = validate(write_variant(tmp_path, misspell))
    assert code == 2
    assert "model.text.layer_types.full.mixer.num_kv_head: unknown key — did you mean 'num_key_value_heads'?" in err
    # the key it replaced is now missing, and that is said too
    assert "model.text.layer_types.full.mixer.num_key_value_heads: required key is missing" in err


def test_unknown_top_level_section_suggests(tmp_path):
    code, err = validate(write_variant(tmp_path, lambda d: d.update(paralel=d.pop("parallel"))))
    assert code == 2 and "paralel: unknown key — did you mean 'parallel'?" in err


def test_bad_enum_value_in_a_list_names_the_index():
    code, err = validate(FLAGSHIP, "-o", "model.text.layers.7=lnear")
    assert code == 2
    assert "model.text.layers[7]: 'lnear' is not a layer type of model.text.layer_types — did you mean 'linear'?" in err


def test_wrong_type_says_what_was_expected():
    code, err = validate(TINY, "-o", "model.text.hidden_size=wide")
    assert code == 2
    assert "model.text.hidden_size: 'wide' is a string, expected an integer" in err


def test_float_for_integer_and_yaml_exponent_trap(tmp_path):
    def edit(d):
        d["model"]["text"]["hidden_size"] = 64.0
        d["model"]["text"]["rms_norm_eps"] = "1e-6"

    code, err = validate(write_variant(tmp_path, edit))
    assert code == 2
    assert "model.text.hidden_size: 64.0 is a number, expected an integer — write 64" in err
    assert "model.text.rms_norm_eps: '1e-6' is a string, expected a number — write 1.0e-6" in err


def test_layer_count_mismatch():
    code, err = validate(TINY, "-o", "model.text.num_hidden_layers=6")
    assert code == 2
    assert "model.text.layers: has 4 entries but num_hidden_layers is 6" in err
    assert "set num_hidden_layers: 4" in err


def test_kv_heads_not_dividing_heads_lists_divisors():
    code, err = validate(FLAGSHIP, "-o", "model.text.layer_types.full.mixer.num_key_value_heads=3")
    assert code == 2
    assert ("qwen3_5_4b.yaml: model.text.layer_types.full.mixer.num_key_value_heads: 3 does not divide num_attention_heads 16 — "
            "set num_key_value_heads to a divisor of num_attention_heads (1, 2, 4, 8, 16)") in err


def test_value_heads_not_multiple_of_key_heads():
    code, err = validate(TINY, "-o", "model.text.layer_types.linear.mixer.num_value_heads=3")
    assert code == 2
    assert "model.text.layer_types.linear.mixer.num_value_heads: 3 is not a multiple of num_key_heads 2" in err


def test_mrope_sections_must_sum_to_half_the_rotary_dim():
    code, err = validate(FLAGSHIP, "-o", "model.text.rope.mrope_section=[11, 11, 11]")
    assert code == 2
    assert "model.text.rope.mrope_section: [11, 11, 11] sums to 33, but there are 32 rotary frequencies" in err
    assert "make the three sections sum to 32" in err


def test_vision_merger_must_feed_the_text_width():
    code, err = validate(TINY, "-o", "model.vision.merger.out_hidden_size=128")
    assert code == 2
    assert "model.vision.merger.out_hidden_size: 128 does not match model.text.hidden_size 64 — set it to 64" in err


def test_vision_heads_must_divide_vision_width():
    code, err = validate(TINY, "-o", "model.vision.num_heads=5")
    assert code == 2 and "model.vision.num_heads: 5 does not divide hidden_size 32" in err


def test_unknown_block_name_is_refused_by_the_schema_enum():
    code, err = validate(TINY, "-o", "model.text.layer_types.linear.mixer.block=gated_deltanett")
    assert code == 2
    assert ("model.text.layer_types.linear.mixer.block: 'gated_deltanett' is not one of gated_attention, gated_deltanet "
            "— did you mean 'gated_deltanet'?") in err


def test_block_named_in_schema_but_not_registered_is_refused(monkeypatch):
    """The registry, not the schema, is the last word: a schema name without a block fails validation."""
    from assembler.spec import loading as spec_loading
    from blocks import registry

    real = registry.get_block

    def without_swiglu(kind, name):
        if (kind, name) == ("mlp", "swiglu"):
            raise registry.UnknownBlockError(f"no {kind} block named {name!r}")
        return real(kind, name)

    monkeypatch.setattr(registry, "get_block", without_swiglu)
    with pytest.raises(SpecError) as caught:
        spec_loading.load_spec(TINY)
    assert "model.text.layer_types.linear.mlp.block: 'swiglu' is not a registered mlp block" in str(caught.value)


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nmodel:\n  text: [linear, full\n  vision: {}\n")
    code, err = validate(path)
    assert code == 2
    assert f"{path}:4:" in err and "YAML syntax error" in err


def test_duplicate_key_is_an_error_with_its_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(TINY.read_text() + "name: again\n")
    code, err = validate(path)
    assert code == 2 and "duplicate key 'name'" in err and "first set on line" in err


def test_missing_file():
    code, err = validate("specs/no_such_spec.yaml")
    assert code == 2 and "specs/no_such_spec.yaml: no such spec file" in err


def test_override_without_equals():
    code, err = validate(TINY, "-o", "train.steps")
    assert code == 2
    assert "override 'train.steps': has no '='" in err and "dotted.key=value" in err


def test_override_of_unknown_path_suggests():
    code, err = validate(TINY, "-o", "train.optimiser.lr=1.0")
    assert code == 2
    assert "override 'train.optimiser.lr=1.0': train.optimiser: unknown key — did you mean 'optimizer'?" in err


def test_override_index_out_of_range():
    code, err = validate(TINY, "-o", "model.text.layers.9=full")
    assert code == 2 and "model.text.layers[9]: index 9 is out of range (the list has 4 items)" in err


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    def edit(d):
        d["model"]["text"]["hidden_size"] = "x"
        d["model"]["text"]["layers"][1] = "ful"
        d["data"]["loss_on"] = "everything"

    code, err = validate(write_variant(tmp_path, edit))
    assert code == 2
    assert len(err.strip().splitlines()) == 3
    assert all(line.startswith("error: ") for line in err.splitlines())


def test_problem_format_with_and_without_location():
    assert str(Problem("a.b[2]", "is wrong", "fix it", file="x.yaml")) == "x.yaml: a.b[2]: is wrong — fix it"
    assert str(Problem("", "YAML syntax error: bad", file="x.yaml", line=3, column=7)) == "x.yaml:3:7: YAML syntax error: bad"
    assert str(Problem("k", "is wrong")) == "k: is wrong"


def test_a_key_renamed_to_the_transformers_name_says_its_new_name(tmp_path):
    # Specs before 2026-12-01 used num_kv_heads / rope.theta / num_layers: say what they are called now, once each.
    old = yaml.safe_load(TINY.read_text())
    old["model"]["text"]["num_layers"] = old["model"]["text"].pop("num_hidden_layers")
    old["model"]["text"]["rope"]["theta"] = old["model"]["text"]["rope"].pop("rope_theta")
    mixer = old["model"]["text"]["layer_types"]["full"]["mixer"]
    mixer["num_kv_heads"] = mixer.pop("num_key_value_heads")
    with pytest.raises(SpecError) as caught:
        load_spec_from_dict(old, source=TINY)
    message = str(caught.value)
    for path, new in [("model.text.num_layers", "num_hidden_layers"), ("model.text.rope.theta", "rope_theta"),
                      ("model.text.layer_types.full.mixer.num_kv_heads", "num_key_value_heads")]:
        assert f"{path}: unknown key — renamed to `{new}`" in message
    lines = message.splitlines()
    assert len(lines) == len(set(lines)), "a problem was reported twice"
