"""AdamW groups and the warmup + cosine/linear schedule of `train:`."""

import pytest
import torch
from torch import nn

from assembler.train.optim import build_lr_schedule, build_optimizer, lr_multiplier


def _lrs(schedule: dict, total: int) -> list[float]:
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, {"name": "adamw", "lr": 1.0, "weight_decay": 0.1})
    sched = build_lr_schedule(opt, schedule, total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_then_cosine_reaches_min_ratio_at_last_step():
    lrs = _lrs({"name": "cosine", "warmup_steps": 4, "min_lr_ratio": 0.1}, 20)
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # monotone decay after warmup


def test_linear_decay_halfway_is_halfway():
    total, warmup = 11, 1
    assert lr_multiplier(warmup + 4.5, total_steps=total, warmup_steps=warmup, name="linear", min_lr_ratio=0.0) == pytest.approx(0.5)
    lrs = _lrs({"name": "linear", "warmup_steps": warmup, "min_lr_ratio": 0.0}, total)
    assert lrs[-1] == pytest.approx(0.0)


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="train.schedule.name"):
        _lrs({"name": "triangle"}, 3)


def test_weight_decay_only_on_matrices_and_tied_weights_once():
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5))
    model[1].weight = model[0].weight  # tied: [5, 3] both
    opt = build_optimizer(model, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1})
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and [p.shape for p in decay["params"]] == [torch.Size([5, 3])]
    assert no_decay["weight_decay"] == 0.0 and [p.shape for p in no_decay["params"]] == [torch.Size([5])]
