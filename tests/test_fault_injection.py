"""Fault injection (issue 12): a run with a checkpoint every step is SIGKILLed at 20 seeded moments —
at random times, inside checkpoint saves and inside the HF export (the first one and re-exports
over a finished one) — and restarted with the same command each time. After every kill:

- the checkpoint the next run would resume from is whole (`verify_checkpoint`), and the next run
  says it resumed from exactly that one;
- the export folder is absent (never written yet) or a whole export, never a mix or a half;
- nothing outside the run folder changed (a sibling folder's hash, the parent's listing).

At the end the losses of every step equal an uninterrupted run's, bitwise, and so do the exported
tensors. CPU, the tiny spec at 64 tokens a step, 8 steps; about 1.5 minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from assembler.train.checkpoint import COMPLETE_MARKER, latest_checkpoint, verify_checkpoint
from assembler.cli.train import train_command

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
STEPS = 8
KILLS = 20
SEED = 12
ARGS = ["-o", f"train.steps={STEPS}", "-o", "train.checkpoint.every=1", "-o", "train.checkpoint.keep_last=2",
        "-o", "train.log_every=1", "-o", "train.tokens_per_step=64", "-o", "data.packing.length=64",
        "-o", "train.export_hf=true"]
MODES = ["anytime", "in_save", "in_export"]


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == sorted({r["step"] for r in records}), "metrics.jsonl repeats steps"
    return {r["step"]: r["loss"] for r in records}


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _export_state(hf: Path) -> str:
    """'absent' or 'whole'; anything else fails the test."""
    if not hf.exists():
        return "absent"
    assert (hf / ".assemble-export").is_file(), f"{hf} has no marker: {sorted(os.listdir(hf))}"
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        load_file(str(hf / shard))  # every shard the index names is there and whole
    json.loads((hf / "config.json").read_text())
    return "whole"


def _saving(folder: Path):
    """A test for "this save is under way": `folder` created anew (a killed save's leftover does not
    count; the save removes it first) and not complete yet."""
    def identity():  # the inode number alone is reused at once by a remove-then-create
        stat = folder.stat()
        return stat.st_ino, stat.st_ctime_ns

    stale = identity() if folder.is_dir() else None

    def ready() -> bool:
        try:
            return identity() != stale and not (folder / COMPLETE_MARKER).exists()
        except FileNotFoundError:
            return False

    return ready


def _exporting(run: Path):
    """A test for "an export is under way": a `.hf.partial-*` folder that a killed export did not leave."""
    def partials() -> set[str]:
        return {p.name for p in run.iterdir() if p.name.startswith(".hf.partial-")} if run.is_dir() else set()

    stale = partials()
    return lambda: bool(partials() - stale)


def _launch(run: Path, log: Path) -> subprocess.Popen:
    code = "from cli import assemble; assemble()"
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-c", code, "train", str(TINY), *ARGS, "--output-dir", str(run)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def _kill_when(proc: subprocess.Popen, ready, extra_delay: float, deadline: float) -> bool:
    """SIGKILL `proc` `extra_delay` s after `ready()` first holds; False when it ended before."""
    while not ready():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the run neither reached the kill point nor finished"
        time.sleep(0.002)
    time.sleep(extra_delay)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow
def test_sigkills_anywhere_lose_nothing_and_change_nothing_outside(tmp_path):
    straight = tmp_path / "straight"
    result = CliRunner().invoke(train_command, [str(TINY), *ARGS, "--output-dir", str(straight)])
    assert result.exit_code == 0, result.output
    expected = _losses(straight)
    assert sorted(expected) == list(range(1, STEPS + 1))

    work = tmp_path / "work"
    sibling = work / "sibling"  # a user's folder next to the run: must never change
    sibling.mkdir(parents=True)
    (sibling / "thesis.txt").write_text("three years of work\n")
    (sibling / "data.bin").write_bytes(os.urandom(4096))
    (sibling / "hf").mkdir()
    (sibling / "hf" / "notes.md").write_text("a folder named like an export\n")
    sibling_hash = _tree_hash(sibling)
    run = work / "run"

    rng = random.Random(SEED)
    # The plan: kills while training (random moments and inside saves), then kills in the export
    # (the first one and re-exports over a whole one), each shuffled by the seed.
    training_plan = ["in_save"] * 7 + ["anytime"] * 6
    export_plan = ["in_export"] * 5 + ["anytime"] * 2
    rng.shuffle(training_plan)
    rng.shuffle(export_plan)
    plan = training_plan + export_plan
    assert len(plan) == KILLS
    kills = {mode: 0 for mode in MODES}
    finished_runs = launches = 0
    while plan:
        launches += 1
        assert launches < 3 * KILLS, f"too many launches without enough kills: {kills}"
        resumable = latest_checkpoint(run / "checkpoints")
        done = int(resumable.name.removeprefix("step_")) if resumable is not None else 0
        mode = plan[0]
        if mode == "in_save" and done == STEPS:
            mode = "in_export"  # no save left to kill in
        log = tmp_path / f"launch_{launches:02d}.log"
        proc = _launch(run, log)
        deadline = time.monotonic() + 300
        if mode == "anytime":
            start = time.monotonic()
            # Start-up takes about 3 s, a step with its save about 0.6 s: a moment within this
            # launch, mostly before its last save (so the saves left to kill in run out slowly).
            span = 2.5 + 0.5 * max(STEPS - done - 1, 1)
            killed = _kill_when(proc, lambda: time.monotonic() - start > 0.5, rng.uniform(0.0, span), deadline)
        elif mode == "in_save":
            # Mostly the first save after the resume (no progress), sometimes a later one.
            target = done + 1 + (rng.random() < 0.25) * rng.randint(0, STEPS - done - 1)
            killed = _kill_when(proc, _saving(run / "checkpoints" / f"step_{target:06d}"), rng.uniform(0.0, 0.5), deadline)
        else:
            killed = _kill_when(proc, _exporting(run), rng.uniform(0.0, 0.15), deadline)
        output = log.read_text()
        if killed:
            kills[mode] += 1
            plan.pop(0)
        else:
            assert proc.wait() == 0, output
            finished_runs += 1
        resumed = [line for line in output.splitlines() if line.startswith("resumed from ")]
        if resumable is not None and resumed:  # a launch killed before it got there prints none
            assert resumed == [f"resumed from {resumable} at step {done}"], output
        assert "Traceback" not in output, output

        # What a kill may leave: a checkpoint to resume from that is whole, an export that is whole
        # or absent, and nothing changed outside the run folder.
        latest = latest_checkpoint(run / "checkpoints")
        if latest is not None:
            verify_checkpoint(latest)
        _export_state(run / "hf")
        assert _tree_hash(sibling) == sibling_hash
        assert sorted(p.name for p in work.iterdir()) == ["run", "sibling"]

    print(f"fault injection: {launches} launches, kills {kills}, {finished_runs} finished")
    assert sum(kills.values()) == KILLS and kills["in_save"] >= 3 and kills["in_export"] >= 3, kills
    final = subprocess.run([sys.executable, "-c", "from cli import assemble; assemble()", "train", str(TINY), *ARGS,
                            "--output-dir", str(run)], cwd=ROOT, capture_output=True, text=True)
    assert final.returncode == 0, final.stdout + final.stderr
    assert f"resumed from {run / 'checkpoints' / f'step_{STEPS:06d}'} at step {STEPS}" in final.stdout

    assert _losses(run) == expected  # bitwise
    assert _export_state(run / "hf") == "whole"
    exported = {}
    for folder in (straight, run):
        index = json.loads((folder / "hf" / "model.safetensors.index.json").read_text())
        exported[folder] = {k: v for shard in set(index["weight_map"].values()) for k, v in load_file(str(folder / "hf" / shard)).items()}
    assert exported[straight].keys() == exported[run].keys()
    assert all(torch.equal(exported[straight][k], exported[run][k]) for k in exported[straight])
    assert not [p.name for p in run.iterdir() if re.match(r"^\.hf\.(partial|old)-", p.name)]  # the last export cleaned up
    assert _tree_hash(sibling) == sibling_hash
