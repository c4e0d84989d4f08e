"""Inputs that ended in a Python traceback (issue 26) and now end in a user error: what was wrong,
where (file, line or JSON path), exit code 2; bad data obeys `data.on_error`.

One test per class of input: number keys where a name is expected, nesting thousands deep, image
paths the OS refuses, images past Pillow's decompression-bomb limit, numbers the schema accepted
but no model can be built with, and the damaged files of a checkpoint or run folder; then what the
fuzz (tests/test_fuzz_inputs.py) and probing the commands found: spec and command-line paths the
OS refuses, a packing length past the row.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from assembler.data import DataError, ImageProcessor
from assembler.data.records import ReadResult, read_jsonl_line
from assembler.hf.checkpoint.errors import CheckpointError
from assembler.spec.errors import USER_ERROR_EXIT_CODE
from cli import assemble

TINY = Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml"
DEEP = 5000  # levels of nesting: far past Python's recursion limit


def _run(*args: str):
    result = CliRunner().invoke(assemble, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def _tiny_spec_with(tmp_path: Path, edit) -> Path:
    spec = yaml.safe_load(TINY.read_text())
    edit(spec)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- a key that is not a name -----------------------------------------------------------------


def test_a_number_key_for_a_layer_type_is_named_with_its_path(tmp_path):
    """`5:` under model.text.layer_types raised TypeError in the compile-policy filling."""
    path = _tiny_spec_with(tmp_path, lambda s: s["model"]["text"]["layer_types"].update({5: s["model"]["text"]["layer_types"]["full"]}))
    result = _run("validate", path)
    assert result.exit_code == USER_ERROR_EXIT_CODE
    assert f"{path}: model.text.layer_types: the key 5 is an integer, expected a name" in result.output


def test_a_number_key_in_an_override_and_a_misnamed_layer(tmp_path):
    """The same key from `-o`, with a `layers` entry naming no type (its did-you-mean met the number)."""
    result = _run("validate", TINY, "-o", "model.text.layer_types={5: {mixer: {block: swiglu}}, full: {}}",
                  "-o", "model.text.layers=[ful]")
    assert result.exit_code == USER_ERROR_EXIT_CODE
    assert "model.text.layer_types: the key 5 is an integer, expected a name" in result.output
    assert "model.text.layers[0]: 'ful' is not a layer type" in result.output


def test_a_number_key_under_parallel_compile(tmp_path):
    path = _tiny_spec_with(tmp_path, lambda s: s["parallel"]["compile"].update({7: {"enabled": False}}))
    result = _run("validate", path)
    assert result.exit_code == USER_ERROR_EXIT_CODE
    assert "parallel.compile: the key 7 is an integer, expected a name" in result.output


# --- nesting thousands deep -------------------------------------------------------------------


def test_a_deeply_nested_spec_file_is_a_spec_error_naming_the_file(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * DEEP + "]" * DEEP + "\n")
    result = _run("validate", path)
    assert result.exit_code == USER_ERROR_EXIT_CODE
    assert f"error: {path}: nested more than 32 mappings or lists deep" in result.output


def test_a_spec_nested_deeper_than_a_spec_goes_names_the_path(tmp_path):
    """Deep enough to parse, too deep to copy and validate: reported where it gets too deep."""
    path = tmp_path / "deep.yaml"
    path.write_text(TINY.read_text() + "\nextra: " + "[" * 60 + "]" * 60 + "\n")
    result = _run("validate", path)
    assert result.exit_code == USER_ERROR_EXIT_CODE
    assert f"{path}: extra" + "[0]" * 31 + ": nested more than 32" in result.output


def test_a_deeply_nested_override_is_a_spec_error():
    result = _run("validate", TINY, "-o", "name=" + "[" * DEEP + "]" * DEEP)
    assert result.exit_code == USER_ERROR_EXIT_CODE
    assert "nested more than 32 mappings or lists deep" in result.output
    assert len(result.output) < 1000  # the override is quoted cut short, not 10,000 brackets


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_deeply_nested_record_obeys_on_error(tmp_path, on_error):
    into = ReadResult()
    raw = ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n").encode()
    read = lambda: read_jsonl_line(raw, path=tmp_path / "d.jsonl", number=3, on_error=on_error, into=into)  # noqa: E731
    if on_error == "raise":
        with pytest.raises(DataError, match=r"d.jsonl:3: JSON nested too deeply"):
            read()
    else:
        read()
        assert into.records == [] and len(into.skipped) == 1 and "d.jsonl:3: JSON nested too deeply" in into.skipped[0]


def test_a_deeply_nested_config_json_is_a_user_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": ' + "[" * 100_000 + "]" * 100_000 + "}")
    result = _run("import-hf", tmp_path, "-o", tmp_path / "out.yaml")
    assert result.exit_code == USER_ERROR_EXIT_CODE
    assert f"{tmp_path / 'config.json'}: JSON nested too deeply to read" in result.output


def test_a_deeply_nested_checkpoint_folder_config_is_a_checkpoint_error(tmp_path):
    from assembler.hf.checkpoint.reading import open_checkpoint_folder

    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        open_checkpoint_folder(tmp_path)


# --- image paths the OS refuses -----------------------------------------------------------------


def _image_record(path: str) -> bytes:
    return (json.dumps({"messages": [{"role": "user", "content": [{"type": "image", "path": path}]},
                                     {"role": "assistant", "content": "ok"}]}) + "\n").encode()


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("image_path, why", [("a" * 5000, "File name too long"), ("a\x00b.png", "embedded null byte")])
def test_an_image_path_the_os_refuses_obeys_on_error(tmp_path, image_path, why, on_error):
    into = ReadResult()
    read = lambda: read_jsonl_line(_image_record(image_path), path=tmp_path / "d.jsonl", number=1, on_error=on_error, into=into)  # noqa: E731
    if on_error == "raise":
        with pytest.raises(DataError, match=rf"d.jsonl:1: messages\[0\].content\[0\]: image path .* is not a usable file path \({why}\)") as error:
            read()
        assert len(str(error.value)) < 600  # the 5000-character path is cut short
    else:
        read()
        assert into.records == [] and len(into.skipped) == 1 and why in into.skipped[0]


# --- an image past Pillow's decompression-bomb limit ------------------------------------------------


@pytest.fixture
def small_bomb_limit(monkeypatch):
    """Pillow refuses images over 2 x MAX_IMAGE_PIXELS; a limit of 1000 makes a 64x64 image one
    (a real one would be 180 megapixels)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_an_image_past_the_decompression_bomb_limit_obeys_on_error(tmp_path, small_bomb_limit, on_error):
    from assembler.data import load_tokenizer
    from assembler.data.encoding import encode_records
    from assembler.data.records import read_jsonl

    Image.new("RGB", (32, 16)).save(tmp_path / "small.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "huge.png")
    (tmp_path / "data.jsonl").write_bytes(_image_record("small.png") + _image_record("huge.png"))
    processor = ImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2, min_pixels=256, max_pixels=65536)
    records = read_jsonl(tmp_path / "data.jsonl").records
    run = lambda: encode_records(records, load_tokenizer(None), image_processor=processor, loss_on="assistant",  # noqa: E731
                                 max_length=256, overlong="truncate", on_error=on_error)
    if on_error == "raise":
        with pytest.raises(DataError, match=r"data.jsonl:2: image .*huge.png is larger than 2,000 pixels, Pillow's limit"):
            run()
    else:
        samples, stats = run()
        assert len(samples) == 1 and stats.skipped == 1


# --- numbers the schema accepted but no model can be built with --------------------------------------


@pytest.mark.parametrize("override, message", [
    ("model.text.vocab_size=1000000000000000000000000000000", "model.text.vocab_size: 1000000000000000000000000000000 is above the maximum"),
    ("model.text.layer_types.full.mlp.intermediate_size=10000000000", "model.text.layer_types.full.mlp.intermediate_size: 10000000000 is above the maximum"),
    ("model.vision.num_position_embeddings=65", "model.vision.num_position_embeddings: 65 is not a square number"),
    ("model.vision.hidden_size=20", "model.vision.num_heads: hidden_size 20 / num_heads 2 = head_dim 10, not a multiple of 4 (the 2D rotary embedding's two axes of cos/sin halves) — set num_heads to one of 1, 5"),
    ("model.vision.hidden_size=6", "model.vision.num_heads: hidden_size 6 / num_heads 2 = head_dim 3, not a multiple of 4"),
    ("model.text.rope.partial_rotary_factor=.nan", "model.text.rope.partial_rotary_factor: nan is not a finite number"),
    ("train.optimizer.lr=.inf", "train.optimizer.lr: inf is not a finite number"),
    ("data.sources=[{path: data/tiny/chats.jsonl, weight: 1.0e+300}]", "data.sources[0].weight: 1e+300 is above the maximum 1000"),
    ("data.sources=[{path: data/tiny/chats.jsonl, weight: 1.0e300}]", "data.sources[0].weight: '1.0e300' is a string, expected a number — write 1.0e+300"),
    ("train.seed=100000000000000000000", "train.seed: 100000000000000000000 is above the maximum"),
])
@pytest.mark.parametrize("command", ["validate", "build"])
def test_a_number_no_model_can_be_built_with_is_refused_by_validation(command, override, message):
    result = _run(command, TINY, "-o", override)
    assert result.exit_code == USER_ERROR_EXIT_CODE
    assert f"{TINY}: {message}" in result.output


# --- damaged checkpoint and run-folder files -----------------------------------------------------------


@pytest.mark.parametrize("header", [b"[1, 2]", b'{"w": {"dtype": "F32", "shape": ["x"], "data_offsets": [0, 4]}}',
                                    b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}'])
def test_a_safetensors_header_of_the_wrong_shape_is_a_checkpoint_error(tmp_path, header):
    from assembler.hf.checkpoint.reading import read_safetensors_header

    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt safetensors header"):
        read_safetensors_header(path)


def test_an_index_whose_weight_map_is_not_an_object_is_a_checkpoint_error(tmp_path):
    from assembler.hf.checkpoint.reading import open_checkpoint_folder

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": ["model.safetensors"]}')
    with pytest.raises(CheckpointError, match="not a safetensors index"):
        open_checkpoint_folder(tmp_path)


@pytest.mark.parametrize("saved", ["model: [unclosed", "- a list", "[" * DEEP])
def test_a_damaged_resolved_spec_in_the_run_folder_is_a_run_folder_error(tmp_path, saved):
    from assembler.train.run_dir import RESOLVED_SPEC_FILE, RunFolderError, check_same_model

    (tmp_path / RESOLVED_SPEC_FILE).write_text(saved)
    with pytest.raises(RunFolderError, match=f"(?s){RESOLVED_SPEC_FILE}: .*the run folder is damaged"):
        check_same_model(tmp_path, "model: {}\n")


# --- found by the fuzz (tests/test_fuzz_inputs.py) -------------------------------------------------------


@pytest.mark.parametrize("key, value, why", [
    ("data.sources", '[{path: "a\\0b.jsonl"}]', lambda anchored: "it contains a NUL byte"),
    ("data.tokenizer", "t" * 300, lambda anchored: "it has a file or folder name of 300 bytes"),
    ("train.init_from", "d/" * 2500, lambda anchored: f"it is {len(os.fsencode(anchored)):,} bytes long"),
    ("train.output_dir", "o" * 256, lambda anchored: "it has a file or folder name of 256 bytes"),
])
@pytest.mark.parametrize("command", ["validate", "data", "train"])
def test_a_spec_path_the_os_would_refuse_is_refused_by_validation(command, key, value, why):
    """Such paths raised ValueError / OSError from the first open() of `data` or `train`. A path set
    with -o is relative to the working directory, so the message shows it anchored there."""
    result = _run(command, TINY, "-o", f"{key}={value}")
    assert result.exit_code == USER_ERROR_EXIT_CODE
    shown = "data.sources[0].path" if key == "data.sources" else key
    assert f"{TINY}: {shown}: '" in result.output, result.output
    anchored = str(Path.cwd() / ("d/" * 2500)) if key == "train.init_from" else ""
    assert f"is not a usable path: {why(anchored)}" in result.output, result.output


def test_a_packing_length_past_the_row_is_refused_by_validation():
    """`assemble data` planned rows with it and raised ValueError in the planner."""
    result = _run("data", TINY, "-o", "train.tokens_per_step=16")
    assert result.exit_code == USER_ERROR_EXIT_CODE
    assert f"{TINY}: data.packing.length: 256 is larger than train.tokens_per_step 16" in result.output


@pytest.mark.parametrize("path, why", [("x" * 5000, "it is 5,000 bytes long"), ("a\x00b", "it contains a NUL byte")])
@pytest.mark.parametrize("command", [
    ["validate", "{path}"], ["build", "{path}"], ["data", "{path}"], ["train", "{tiny}", "--resume", "{path}"],
    ["train", "{tiny}", "--output-dir", "{path}"], ["export", "{path}", "{tmp}/out"], ["import-hf", "{path}", "-o", "{tmp}/x.yaml"],
])
def test_a_command_line_path_the_os_would_refuse_is_a_usage_error(tmp_path, command, path, why):
    """They raised OSError (File name too long) or ValueError (embedded null byte) from the first open()."""
    args = [arg.format(path=path, tiny=TINY, tmp=tmp_path) for arg in command]
    result = _run(*args)
    assert result.exit_code == USER_ERROR_EXIT_CODE
    assert f"is not a usable path: {why}" in result.output


@pytest.mark.parametrize("parent, why", [("a\x00b.yaml", "it contains a NUL byte"), ("y" * 300, "it has a file or folder name of 300 bytes")])
def test_an_extends_path_the_os_would_refuse_is_a_spec_error(tmp_path, parent, why):
    path = tmp_path / "child.yaml"
    path.write_text(yaml.safe_dump({"extends": parent, "name": "child"}))
    result = _run("validate", path)
    assert result.exit_code == USER_ERROR_EXIT_CODE
    assert f"{path}: extends: not a usable path: {why}" in result.output
