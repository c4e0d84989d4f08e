"""Training checkpoints: DCP round trip of model/optimizer/scheduler/RNG/data position, the
completion marker, keep-last-N, and what `--resume PATH` accepts."""

import random

import pytest
import torch
from torch import nn

from assembler.train.checkpoint import (
    COMPLETE_MARKER,
    ResumeError,
    checkpoint_folder,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume_path,
    save_checkpoint,
)
from assembler.train.optim import build_lr_schedule, build_optimizer


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.proj = nn.Linear(4, 4)
        self.head = nn.Linear(4, 11, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.proj(self.embed(ids))))


def _setup(seed):
    torch.manual_seed(seed)
    model = Tied()
    opt = build_optimizer(model, {"name": "adamw", "lr": 1e-2, "weight_decay": 0.1})
    sched = build_lr_schedule(opt, {"name": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.1}, 10)
    return model, opt, sched


def _step(model, opt, sched):
    ids = torch.randint(0, 11, (6,))  # draws from the global RNG: resume must restore it
    loss = nn.functional.cross_entropy(model(ids), torch.roll(ids, 1))
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return loss.detach()


def _save(path, model, opt, sched, step):
    return save_checkpoint(path, model=model, optimizer=opt, scheduler=sched, step=step,
                           data_state={"position": step * 7}, resolved_spec_yaml="name: toy\n")


def test_round_trip_continues_bitwise(tmp_path):
    model, opt, sched = _setup(0)
    for _ in range(3):
        _step(model, opt, sched)
    path = _save(checkpoint_folder(tmp_path, 3), model, opt, sched, 3)
    python_draw = random.random()
    straight = [_step(model, opt, sched) for _ in range(3)]

    model2, opt2, sched2 = _setup(1)  # different init and RNG: everything must come from the file
    resumed = load_checkpoint(path, model=model2, optimizer=opt2, scheduler=sched2)
    assert resumed.step == 3 and resumed.data_state == {"position": 21}
    assert model2.head.weight is model2.embed.weight  # loading kept the tie
    assert random.random() == python_draw
    again = [_step(model2, opt2, sched2) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(straight, again))
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert sched2.last_epoch == sched.last_epoch


def test_marker_is_written_last_and_incomplete_is_ignored(tmp_path, monkeypatch):
    from assembler.train import checkpoint

    model, opt, sched = _setup(0)
    _step(model, opt, sched)
    written = []  # every file a save writes, in order (DCP's files as one entry)
    real_save, real_write = checkpoint.dcp.save, checkpoint.write_durably
    monkeypatch.setattr(checkpoint.dcp, "save", lambda *a, **k: (real_save(*a, **k), written.append("dcp"))[0])
    monkeypatch.setattr(checkpoint, "write_durably", lambda path, fill: (real_write(path, fill), written.append(path.name))[0])
    done = _save(checkpoint_folder(tmp_path, 1), model, opt, sched, 1)
    monkeypatch.undo()
    assert written == ["dcp", "trainer_state_rank0.pt", "resolved_spec.yaml", COMPLETE_MARKER]
    assert (done / COMPLETE_MARKER).read_text() == "step 1\n"
    assert {p.name for p in done.iterdir()} >= {".metadata", "trainer_state_rank0.pt", "resolved_spec.yaml", COMPLETE_MARKER}
    half = checkpoint_folder(tmp_path, 2)
    half.mkdir()
    (half / ".metadata").write_bytes(b"partial")  # a run killed mid-save
    assert latest_checkpoint(tmp_path) == done
    assert resolve_resume_path(tmp_path) == done
    with pytest.raises(ResumeError, match="incomplete"):
        resolve_resume_path(half)
    with pytest.raises(ResumeError, match="not a complete checkpoint"):
        load_checkpoint(half, model=model, optimizer=opt, scheduler=sched)


def test_resume_path_accepts_run_folder_and_rejects_empty(tmp_path):
    model, opt, sched = _setup(0)
    _step(model, opt, sched)
    path = _save(checkpoint_folder(tmp_path / "checkpoints", 5), model, opt, sched, 5)
    assert resolve_resume_path(tmp_path) == path
    assert resolve_resume_path(path) == path
    with pytest.raises(ResumeError, match="no such file"):
        resolve_resume_path(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResumeError, match="no complete checkpoint"):
        resolve_resume_path(tmp_path / "empty")


def test_keep_last_n(tmp_path):
    model, opt, sched = _setup(0)
    for step in (2, 4, 6):
        _step(model, opt, sched)
        _save(checkpoint_folder(tmp_path, step), model, opt, sched, step)
    stale = checkpoint_folder(tmp_path, 3)
    stale.mkdir()  # incomplete and older than the newest complete one
    prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000004", "step_000006"]
