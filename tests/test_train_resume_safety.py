"""Resuming never loses or silently ignores anything (issue 12, defects 2, 3, 4, 6 and 7).

One small run (3 steps, a checkpoint each step) is trained once; every test resumes a copy of it
(checkpoint data files hard-linked, every file a run rewrites copied).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from assembler.cli.train import train_command

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "qwen3_5_tiny.yaml"
SMALL = ["-o", "train.checkpoint.every=1", "-o", "train.log_every=1", "-o", "train.export_hf=false",
         "-o", "train.tokens_per_step=64", "-o", "data.packing.length=64"]


def _train(run: Path, *extra: str):
    return CliRunner().invoke(train_command, [str(TINY), *SMALL, "--output-dir", str(run), *extra])


def _step(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:06d}"


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume_safety") / "run"
    result = _train(run, "-o", "train.steps=3", "-o", "train.checkpoint.keep_last=3")
    assert result.exit_code == 0, result.output
    assert all((_step(run, s) / "COMPLETE").is_file() for s in (1, 2, 3))
    return run


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    def copy(src, dst):  # checkpoints' data files are never written in place: share them
        return os.link(src, dst) if src.endswith(".distcp") else shutil.copy2(src, dst)

    return Path(shutil.copytree(base_run, tmp_path / "run", copy_function=copy))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".distcp")} | {
        str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*.distcp")}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_from_older_step_moves_newer_checkpoints_aside(run):
    """Defect 3: the freshly written step 2 is kept, the abandoned step 3 is kept but moved aside."""
    step3 = (_step(run, 3) / "trainer_state_rank0.pt").read_bytes()
    result = _train(run, "--resume", str(_step(run, 1)), "-o", "train.steps=2", "-o", "train.checkpoint.keep_last=1")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")) == ["step_000002"]
    assert (_step(run, 2) / "COMPLETE").is_file()
    abandoned = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("abandoned-")]
    assert len(abandoned) == 1 and (abandoned[0] / "step_000003" / "trainer_state_rank0.pt").read_bytes() == step3
    assert f"moved to {abandoned[0]}" in result.output
    from assembler.train.checkpoint import latest_checkpoint

    assert latest_checkpoint(run / "checkpoints") == _step(run, 2)


def test_prune_never_deletes_the_checkpoint_just_written(tmp_path):
    from assembler.train.checkpoint import prune_checkpoints

    for step in (1, 2, 5):
        _step(tmp_path, step).mkdir(parents=True)
        (_step(tmp_path, step) / "COMPLETE").write_text(f"step {step}\n")
    prune_checkpoints(tmp_path / "checkpoints", keep_last=1, just_written=_step(tmp_path, 2))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000002", "step_000005"]


def test_changed_lr_takes_effect_on_resume_and_is_logged(run):
    """Defect 2: lr 5e-3 -> 1e-4 at the step-2 checkpoint; step 3 runs at 1e-4 x warmup(3/10)."""
    result = _train(run, "--resume", str(_step(run, 2)), "-o", "train.steps=4", "-o", "train.optimizer.lr=1.0e-4")
    assert result.exit_code == 0, result.output
    assert "train.optimizer.lr 5e-3 → 1e-4 from step 3" in result.output
    assert "train.steps 3 → 4 from step 3" in result.output
    lrs = {r["step"]: r["lr"] for r in _metrics(run)}
    assert lrs[2] == pytest.approx(5e-3 * 2 / 10)
    assert lrs[3] == pytest.approx(1e-4 * 3 / 10) and lrs[4] == pytest.approx(1e-4 * 4 / 10)
    groups = torch.load(_step(run, 4) / "trainer_state_rank0.pt", weights_only=True)["scheduler"]["base_lrs"]
    assert groups == [pytest.approx(1e-4)] * len(groups)


@pytest.mark.parametrize("override, field", [
    ("data.packing.length=32", "data.packing.length"),
    ("model.text.rms_norm_eps=1.0e-5", "model.text.rms_norm_eps"),
    ("train.seed=1", "train.seed"),
])
def test_unchangeable_field_refused_before_anything_is_written(run, override, field):
    before = _snapshot(run)
    result = _train(run, "-o", override)
    assert result.exit_code == 2, result.output
    assert field in result.output and "cannot change during a run" in result.output
    assert "Traceback" not in result.output
    assert _snapshot(run) == before


def test_resume_of_another_models_run_is_refused_before_writing(run, tmp_path):
    """Defect 6: --resume of another model's checkpoint into a new run folder."""
    other = tmp_path / "other"
    result = _train(other, "--resume", str(_step(run, 3)), "-o", "model.text.layer_types.linear.mlp.intermediate_size=96")
    assert result.exit_code == 2, result.output
    assert "model.text.layer_types.linear.mlp.intermediate_size: 128 in the checkpoint, 96 now" in result.output
    assert not other.exists()


def test_torn_metrics_line_is_dropped_with_a_warning(run):
    """Defect 4: a kill mid-write leaves half a JSON line; the resume warns and goes on."""
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "total_steps": 4, "lo')
    result = _train(run, "-o", "train.steps=4")
    assert result.exit_code == 0, result.output
    assert "metrics.jsonl:4 is not a whole record" in result.output
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3, 4]


def test_damaged_complete_checkpoint_falls_back_or_is_named(run):
    """Defect 4: a truncated .distcp under COMPLETE. Auto-resume warns and takes step 2;
    an explicit --resume of it exits 2 naming the file."""
    data = _step(run, 3) / "__0_0.distcp"
    content = data.read_bytes()
    data.unlink()  # a real copy, not the shared link
    data.write_bytes(content[: len(content) // 2])
    named = _train(run, "--resume", str(_step(run, 3)))
    assert named.exit_code == 2, named.output
    assert str(data) in named.output and "truncated" in named.output and "Traceback" not in named.output
    auto = _train(run, "-o", "train.steps=3")
    assert auto.exit_code == 0, auto.output
    assert f"warning: {data}" in auto.output and f"resumed from {_step(run, 2)} at step 2" in auto.output
    assert (_step(run, 3) / "COMPLETE").is_file()  # step 3 trained again and rewritten whole


class _Payload:
    """What a malicious trainer state would unpickle: weights_only loading must never run it."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["ASSEMBLE_TEST_SENTINEL"]),))


def test_trainer_state_is_not_unpickled(run, tmp_path, monkeypatch):
    """Defect 7: a trainer state holding an arbitrary object is refused, its code never run."""
    sentinel = tmp_path / "pwned"
    monkeypatch.setenv("ASSEMBLE_TEST_SENTINEL", str(sentinel))
    state_file = _step(run, 3) / "trainer_state_rank0.pt"
    state = torch.load(state_file, weights_only=True)  # the real one loads weights-only
    torch.save({**state, "data": {**state["data"], "extra": _Payload()}}, state_file)
    result = _train(run, "--resume", str(_step(run, 3)))
    assert not sentinel.exists()
    assert result.exit_code == 2, result.output
    assert str(state_file) in result.output


@pytest.mark.parametrize("where", ["dcp", "trainer_state"])
def test_full_disk_during_a_save_is_exit_2_and_keeps_the_earlier_checkpoints(run, monkeypatch, where):
    """A full disk while saving step 4: exit 2 saying so, the half-written step 4 removed, step 3
    kept whole and resumed from by the next run."""
    import errno

    from assembler.train import checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "dcp":
        from torch.distributed.checkpoint import filesystem
        monkeypatch.setattr(filesystem, "_write_item", full)
    else:
        monkeypatch.setattr(checkpoint, "write_durably", full)
    result = _train(run, "-o", "train.steps=4")
    assert result.exit_code == 2, result.output
    assert "the disk is full" in result.output and "step-4 checkpoint" in result.output
    assert not _step(run, 4).exists()
    checkpoint.verify_checkpoint(_step(run, 3))
    monkeypatch.undo()
    again = _train(run, "-o", "train.steps=4")
    assert again.exit_code == 0 and f"resumed from {_step(run, 3)} at step 3" in again.output, again.output


def test_every_checkpoint_damaged_is_refused_not_restarted(run):
    for step in (1, 2, 3):
        (_step(run, step) / "trainer_state_rank0.pt").write_bytes(b"torn")
    result = _train(run)
    assert result.exit_code == 2, result.output
    assert "every checkpoint" in result.output and "is damaged" in result.output
    assert all((_step(run, step) / "COMPLETE").is_file() for step in (1, 2, 3))  # nothing moved or pruned


def test_resume_keeps_the_auto_plan_of_the_run(run):
    """`activation_checkpointing: auto` plans once, on the run's first batch; a resume applies the
    plan the checkpoint's run made (its resolved spec's section) instead of probing again, whose
    timings could choose another plan and so other compiled graphs (issue 23)."""
    import yaml

    saved_spec = _step(run, 3) / "resolved_spec.yaml"
    spec = yaml.safe_load(saved_spec.read_text())
    plan = {"mode": "selective", "placement": "inside_compile", "layers": [0]}  # as auto writes one on a GPU
    spec["parallel"]["activation_checkpointing"] = plan
    saved_spec.write_text(yaml.safe_dump(spec))

    result = _train(run, "-o", "train.steps=4", "-o", "parallel.activation_checkpointing.mode=auto")
    assert result.exit_code == 0, result.output
    assert "kept the plan of the checkpoint's run" in result.output
    resolved = yaml.safe_load((run / "resolved_spec.yaml").read_text())
    assert resolved["parallel"]["activation_checkpointing"] == plan
    assert "no device memory to plan for" not in result.output  # the CPU's own `auto` answer was not asked


def test_resume_with_auto_names_a_damaged_saved_spec(run):
    """Reading the checkpoint's plan must not turn a damaged resolved_spec.yaml into a traceback:
    the resume refuses it by name, as without `auto`."""
    (_step(run, 3) / "resolved_spec.yaml").write_text("parallel: [unclosed")
    result = _train(run, "-o", "train.steps=4", "-o", "parallel.activation_checkpointing.mode=auto")
    assert result.exit_code == 2, result.output
    assert "resolved_spec.yaml" in result.output and "Traceback" not in result.output
