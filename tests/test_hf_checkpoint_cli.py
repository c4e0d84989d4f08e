"""`assemble export CHECKPOINT_OR_RUN_DIR OUT_DIR`: from an HF folder and from a training run's DCP
checkpoint; user errors exit 2 with a message and no traceback."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from assembler import load_spec_from_dict, spec_from_hf_config
from assembler.model.build import build_model
from assembler.hf.checkpoint import load_hf_checkpoint
from assembler.hf.checkpoint.reading import open_checkpoint_folder
from assembler.train.checkpoint import checkpoint_folder, save_checkpoint
from assembler.train.optim import build_lr_schedule, build_optimizer
from assembler.cli.export import export_command
from tests.hf_checkpoint_fixtures import SIDE_FILES, add_mtp_tensors, make_source_folder


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = make_source_folder(tmp_path_factory.mktemp("cli") / "source")
    add_mtp_tensors(folder)
    return folder


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    index = open_checkpoint_folder(folder)
    out = {}
    for file in index.shard_files:
        with safe_open(str(folder / file), framework="pt") as shard:
            out.update({name: shard.get_tensor(name) for name in shard.keys()})
    return out


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def test_export_an_hf_folder(source, tmp_path):
    result = CliRunner().invoke(export_command, [str(source), str(tmp_path / "out"), "--shard-size", "50KB"])
    assert result.exit_code == 0, result.output
    assert "exported:" in result.output
    _assert_same_tensors(_tensors(tmp_path / "out"), _tensors(source))  # mtp.* included
    assert all((tmp_path / "out" / name).read_text() == text for name, text in SIDE_FILES.items())


def test_export_a_training_run(source, tmp_path):
    """A run folder whose latest DCP checkpoint holds the source's weights exports to the source."""
    base = spec_from_hf_config(source)
    spec = load_spec_from_dict({**base.to_dict(), "train": {**base.train, "init_from": str(source)}})
    model = build_model(spec, device="meta")
    load_hf_checkpoint(model, source, spec)
    optimizer = build_optimizer(model, spec.train["optimizer"])
    scheduler = build_lr_schedule(optimizer, spec.train["schedule"], 10)
    run = tmp_path / "run"
    save_checkpoint(
        checkpoint_folder(run / "checkpoints", 3), model=model, optimizer=optimizer, scheduler=scheduler,
        step=3, data_state={}, resolved_spec_yaml=spec.to_yaml(),
    )
    result = CliRunner().invoke(export_command, [str(run), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    _assert_same_tensors(_tensors(tmp_path / "out"), _tensors(source))
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("nothing_there", r"no such folder"),
        ("truncated", r"model-00002-of-\d+\.safetensors: truncated"),
        ("not_a_checkpoint", r"nothing to export here"),
    ],
)
def test_user_errors_exit_2_without_traceback(source, tmp_path, breakage, message):
    broken = tmp_path / "in"
    if breakage == "truncated":
        shutil.copytree(source, broken)
        victim = next(broken.glob("model-00002-of-*.safetensors"))
        victim.write_bytes(victim.read_bytes()[:-1])
    elif breakage == "not_a_checkpoint":
        broken.mkdir()
    result = CliRunner().invoke(export_command, [str(broken), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert result.output.startswith("error: ")
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
