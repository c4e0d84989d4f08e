"""`train.freeze`: parameters not trained, and the trainable / total count the run reports.

A frozen parameter has requires_grad False before the optimizer is built, so autograd gives it no
gradient, `build_optimizer` (which takes only trainable parameters) gives it no state, and the
update never touches it: it stays bitwise as loaded. Under FSDP2 a frozen parameter is still
sharded and gathered for the forward; it is only left out of the gradient reduce-scatter.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from assembler.hf.checkpoint.model_tensors import checkpoint_name
from assembler.spec.errors import Problem, SpecError


def freeze_parameters(model: nn.Module, patterns: list[str]) -> list[str]:
    """Set requires_grad False on every parameter whose name matches one of `patterns` (fnmatch,
    over every name of a tied tensor); returns the frozen names. SpecError at `train.freeze[i]`
    for a glob that matches no parameter."""
    names = [(checkpoint_name(name), p) for name, p in model.named_parameters(remove_duplicate=False)]
    problems, frozen = [], []
    for index, pattern in enumerate(patterns):
        matched = [(name, p) for name, p in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            problems.append(Problem(
                path=f"train.freeze[{index}]", value=pattern, expected="a glob matching a parameter name",
                message=f"{pattern!r} matches no parameter of this model",
                hint=f"globs are fnmatch patterns over parameter names such as `{names[0][0]}` or `{names[-1][0]}` "
                     "(e.g. `model.visual.*`); `assemble build SPEC --summary` lists the blocks",
            ))
        for name, parameter in matched:
            parameter.requires_grad_(False)
            frozen.append(name)
    if problems:
        raise SpecError(problems)
    return frozen


@dataclass(frozen=True)
class ParameterCounts:
    """Distinct parameters (a tied tensor once), global sizes also when sharded."""

    trainable: int
    total: int

    def describe(self) -> str:
        share = 100.0 * self.trainable / self.total if self.total else 0.0
        return f"parameters: {self.trainable:,} trainable of {self.total:,} ({share:.2f}%)"

    def to_dict(self) -> dict[str, int]:
        return {"trainable": self.trainable, "total": self.total}


def parameter_counts(model: nn.Module) -> ParameterCounts:
    params = list(model.parameters())  # de-duplicates tied tensors; a DTensor's numel is the global one
    return ParameterCounts(trainable=sum(p.numel() for p in params if p.requires_grad), total=sum(p.numel() for p in params))
