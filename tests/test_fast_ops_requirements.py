"""`fast` ops where they cannot run (no CUDA device, no fla): `assemble train` (and `assemble bench`,
tests/test_bench_cli.py) refuse before building anything, with what to do, and exit 2 — not a
dispatcher error from inside the first compiled step."""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import blocks.ops
from blocks.ops import OP_NAMES, chosen_backends, unmet_fast_requirements
from assembler.cli.train import train_command

TINY = Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")


def _fla_installed(monkeypatch, installed: bool) -> None:
    real = blocks.ops.importlib.util.find_spec
    monkeypatch.setattr(blocks.ops.importlib.util, "find_spec",
                        lambda name, *a: (object() if installed else None) if name == "fla" else real(name, *a))


def test_fast_norms_and_cross_entropy_run_anywhere():
    chosen = chosen_backends("hf", {"rms_norm": "fast", "gated_rms_norm": "fast", "cross_entropy": "fast"})
    assert unmet_fast_requirements(chosen, "cpu") == []


def test_fast_kernels_off_cuda_name_the_ops_and_the_way_out(monkeypatch):
    _fla_installed(monkeypatch, True)
    (problem,) = unmet_fast_requirements(chosen_backends("fast"), "cpu")
    assert "attention, delta_rule, conv1d" in problem and "needs a CUDA GPU" in problem and "ops.backend=hf" in problem


def test_fla_is_asked_for_on_cuda_only_by_the_ops_that_use_it(monkeypatch):
    _fla_installed(monkeypatch, False)
    (problem,) = unmet_fast_requirements(chosen_backends("hf", {"conv1d": "fast", "attention": "fast"}), "cuda")
    assert problem.startswith("ops conv1d use") and "pip install 'assemble[gpu]'" in problem
    assert unmet_fast_requirements(chosen_backends("hf", {"attention": "fast"}), "cuda") == []
    _fla_installed(monkeypatch, True)
    assert unmet_fast_requirements(chosen_backends("fast"), "cuda") == []


def test_chosen_backends_applies_overrides_and_rejects_unknown_names():
    chosen = chosen_backends("fast", {"cross_entropy": "hf"})
    assert set(chosen) == set(OP_NAMES) and chosen["cross_entropy"] == "hf" and chosen["attention"] == "fast"
    with pytest.raises(ValueError, match="unknown op"):
        chosen_backends("hf", {"atention": "fast"})


@no_cuda
def test_train_with_fast_ops_on_cpu_stops_before_the_run_folder(tmp_path):
    result = CliRunner().invoke(train_command, [str(TINY), "-o", "ops.backend=fast", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output
    assert "needs a CUDA GPU" in result.stderr and "-o ops.backend=hf" in result.stderr
    assert not (tmp_path / "run").exists()

