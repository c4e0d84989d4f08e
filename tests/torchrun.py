"""`assemble` under `torchrun --standalone` for the multi-rank tests, killed whole (torchrun and its
ranks are one process group) when it outlives its timeout: a collective mismatch hangs forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_TIMEOUT_S = 300  # a normal 2-rank tiny run takes ~35 s on the 2-core CI machine


def torchrun_cli(args: list[str], cwd: Path, *, ranks: int = 2) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc-per-node RANKS cli.py ARGS`; fails the test
    (with its output) on a non-zero exit or a hang."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               str(ROOT / "cli.py"), *args]
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TORCHRUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{ranks}-rank run still going after {TORCHRUN_TIMEOUT_S} s (hung collective?)\n{stdout}\n{stderr[-4000:]}")
    assert proc.returncode == 0, stdout + stderr[-4000:]
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
