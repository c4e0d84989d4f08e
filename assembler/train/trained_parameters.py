"""Which parameters a run trains: `train.adapters` (LoRA on the targeted linear layers, every base
parameter frozen), then `train.freeze`. Applied to the built, unsharded model before parallelize
(assembler.train.loop.build_for_world); `assemble validate` runs the same on the meta device, so a
glob that matches nothing is reported there too, at its JSON path."""

from __future__ import annotations

import torch
from torch import nn

from assembler.adapters.lora import prepare_adapters
from assembler.spec import Spec
from assembler.spec.errors import Problem, SpecError
from assembler.train.freeze import freeze_parameters


def choose_trained_parameters(model: nn.Module, spec: Spec, *, device: torch.device | str = "cpu",
                              initialize_adapters: bool = True) -> None:
    """Add the spec's adapters (filled unless `initialize_adapters` is False: a meta model, filled
    once allocated) and freeze; SpecError naming a glob that matches nothing, or a spec that would
    train nothing."""
    prepare_adapters(model, spec, device=device, initialize=initialize_adapters)
    freeze = list(spec.settings.train.freeze)
    freeze_parameters(model, freeze)
    if not any(p.requires_grad for p in model.parameters()):
        raise SpecError(Problem(path="train.freeze", value=freeze, message="freezes every parameter: nothing would train",
                                hint="leave some parameters out of it (or train adapters: train.adapters)"))


def check_trained_parameters(spec: Spec) -> None:
    """`choose_trained_parameters` on the spec's model built on the meta device (allocates nothing)."""
    from assembler.model.build import build_model

    if spec.settings.train.adapters is None and not spec.settings.train.freeze:
        return
    choose_trained_parameters(build_model(spec, device="meta"), spec, initialize_adapters=False)
