"""`assemble bench` input checks that need no GPU: they fail with exit code 2 and say why."""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import assemble

TINY = Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml"


@pytest.mark.parametrize("bad", [["--seq", "0"], ["--steps", "0"], ["--warmup", "-1"], ["--memory-cap-gib", "0"]])
def test_out_of_range_numbers_are_usage_errors(bad):
    result = CliRunner().invoke(assemble, ["bench", str(TINY), *bad])
    assert result.exit_code == 2
    assert f"Invalid value for '{bad[0]}'" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_bench_without_cuda_says_so():
    result = CliRunner().invoke(assemble, ["bench", str(TINY)])
    assert result.exit_code == 2, result.output
    assert "no CUDA device" in result.stderr and "Traceback" not in result.output


def test_a_bad_spec_is_reported_before_the_gpu_check():
    result = CliRunner().invoke(assemble, ["bench", str(TINY), "-o", "ops.backend=fastest"])
    assert result.exit_code == 2
    assert "ops.backend" in result.stderr and "CUDA" not in result.stderr


def test_the_data_layout_needs_data_sources_before_the_gpu_check():
    flagship = TINY.parent / "qwen3_5_4b.yaml"  # no data.sources
    result = CliRunner().invoke(assemble, ["bench", str(flagship), "--layout", "data"])
    assert result.exit_code == 2
    assert "--layout data" in result.stderr and "data.sources" in result.stderr and "CUDA" not in result.stderr
