"""`assemble train` under torchrun: a user error is printed once (by rank 0), and every rank exits 2.

No process group is started here: the rank is faked, either as the process group's answer
(`assembler.parallel.distributed.process_rank`) or as torchrun's RANK before any group exists (a bad spec
fails before `init_world` runs).
"""

from pathlib import Path

import pytest
from click.testing import CliRunner

from assembler.parallel import distributed
from assembler.parallel.distributed import TORCHRUN_ENV
from assembler.cli.train import USER_ERROR_EXIT_CODE, train_command


@pytest.fixture
def missing_spec(tmp_path: Path, monkeypatch) -> Path:
    for name in TORCHRUN_ENV:  # a plain process unless a test says otherwise
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "no_such_spec.yaml"


def _train(spec: Path):
    return CliRunner().invoke(train_command, [str(spec)])


def test_rank_0_prints_the_error(missing_spec, monkeypatch):
    monkeypatch.setattr(distributed, "process_rank", lambda: 0)
    result = _train(missing_spec)
    assert result.exit_code == USER_ERROR_EXIT_CODE, result.output
    assert result.stderr.startswith("error: "), result.output
    assert str(missing_spec) in result.stderr


def test_other_ranks_exit_2_silently(missing_spec, monkeypatch):
    # The rank must be read before the process group is torn down: afterwards every rank is 0.
    torn_down = []
    monkeypatch.setattr(distributed, "process_rank", lambda: 0 if torn_down else 1)
    monkeypatch.setattr(distributed, "teardown", lambda: torn_down.append(True))
    result = _train(missing_spec)
    assert result.exit_code == USER_ERROR_EXIT_CODE, result.output
    assert "error:" not in result.output
    assert result.output == ""
    assert torn_down == [True]


@pytest.mark.parametrize("rank, prints", [("0", True), ("1", False)])
def test_before_the_process_group_torchrun_rank_decides(missing_spec, monkeypatch, rank, prints):
    # A bad spec fails before init_world joins the group: only torchrun's environment knows the rank.
    env = {"RANK": rank, "WORLD_SIZE": "2", "LOCAL_RANK": rank, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = _train(missing_spec)
    assert result.exit_code == USER_ERROR_EXIT_CODE, result.output
    assert ("error:" in result.stderr) == prints, result.output
