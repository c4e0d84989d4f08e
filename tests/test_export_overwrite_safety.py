"""`export --overwrite` replaces only a folder this project exported (issue 12, defect 1): a user's
folder, the source and a folder containing the source are refused with exit 2 and left as they
were; symlinked targets are followed; leftovers of killed exports are cleaned up."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

EXPORT_MARKER = ".assemble-export"  # the marker an export carries (writing.EXPORT_MARKER)
from assembler.cli.export import export_command
from tests.hf_checkpoint_fixtures import make_source_folder


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_source_folder(tmp_path_factory.mktemp("overwrite") / "source")


@pytest.fixture
def source(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "parent" / "source"))


def _export(*args: str):
    return CliRunner().invoke(export_command, [*map(str, args)])


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refuses_a_folder_it_did_not_write(source, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("three years of work")
    result = _export(source, mine, "--overwrite")
    assert result.exit_code == 2, result.output
    assert "not a folder `assemble export` wrote" in result.output and EXPORT_MARKER in result.output
    assert _listing(mine) == {"thesis.txt": b"three years of work"}


def test_overwrite_refuses_the_source_and_its_parent(source):
    before = _listing(source.parent)
    for target in (source, source.parent):
        result = _export(source, target, "--overwrite")
        assert result.exit_code == 2, result.output
        assert "the folder the export reads from" in result.output and "Traceback" not in result.output
    assert _listing(source.parent) == before


def test_overwrite_replaces_an_earlier_export_and_cleans_leftovers(source, tmp_path):
    out = tmp_path / "out"
    assert _export(source, out).exit_code == 0
    assert (out / EXPORT_MARKER).is_file()
    # What killed exports leave beside the target, and a user's own dot-folder that must stay.
    (tmp_path / ".out.partial-0123abcd").mkdir()
    (tmp_path / ".out.partial-0123abcd" / "model-00001-of-00002.safetensors").write_bytes(b"half")
    (tmp_path / ".out.old-89abcdef").mkdir()
    (tmp_path / ".out.keep").mkdir()
    result = _export(source, out, "--overwrite", "--shard-size", "1GB")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == [".out.keep"]
    assert "model-00001-of-00001.safetensors" in os.listdir(out)


def test_symlinked_target_is_followed_and_the_link_kept(source, tmp_path):
    real = tmp_path / "disk" / "export"
    assert _export(source, real).exit_code == 0
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    result = _export(source, link, "--overwrite", "--shard-size", "1GB")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert "model-00001-of-00001.safetensors" in os.listdir(real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "link", "parent"]  # no .link.old-* left
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    result = _export(source, dangling)
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "nowhere").exists()


def test_train_refuses_a_run_folder_hf_it_did_not_write_before_training(tmp_path):
    from assembler.cli.train import train_command

    tiny = Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml"
    (tmp_path / "run" / "hf").mkdir(parents=True)
    (tmp_path / "run" / "hf" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(train_command, [str(tiny), "-o", "train.steps=1", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "not a folder `assemble export` wrote" in result.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["hf"]  # nothing trained, nothing written
