"""`activation_checkpointing.mode: auto`: the fastest checkpointing plan that fits a memory budget.

Each block is run in one of three ways (CHOICES):
- `none`: nothing recomputed; the block keeps every activation its backward needs;
- `op_level`: torchtitan's selective checkpointing by op: the outputs of matmuls and of the
  attention / delta-rule kernels are kept, the cheap elementwise work between them is recomputed;
- `full`: only the block's input is kept and its whole forward is recomputed in backward.

A `MemoryModel` says, per block type (`linear`, `full`, `vision`), how many blocks there are and,
for each choice, the bytes one block keeps for backward and the seconds it adds to a step; plus
the bytes that do not depend on the plan (weights, gradients, optimizer states, the loss head's
transient). `plan_checkpointing` picks, per block type, how many blocks take each choice so that
the step is fastest and the peak stays within the budget. The search is exact: per type every
split of its blocks over the three choices, combined over types on a Pareto frontier of
(bytes, seconds), which is small (a few hundred points for 32 layers). Text layers may split
within a type (some `full`, some `none`): the spec addresses them by index. Vision blocks are
addressed by type only, so they take one choice for all.

The model is measured on the device by assembler.parallel.activation_checkpoint_probe; here it is given, so the
choice is tested on the CPU from a stated model (tests/test_activation_checkpoint_plan.py).
"""

from __future__ import annotations

from dataclasses import dataclass

CHOICES = ("none", "op_level", "full")
VISION = "vision"  # the vision tower's block type: addressed as a whole (text layers by index too)


@dataclass(frozen=True)
class BlockCost:
    """One block type's cost at the run's tokens per step: `count` blocks, and per choice the bytes
    one block keeps for backward and the seconds of recompute it adds to a step."""

    count: int
    saved_bytes: dict[str, float]
    recompute_s: dict[str, float]


@dataclass(frozen=True)
class MemoryModel:
    fixed_bytes: float  # what the plan does not change: weights, gradients, optimizer states, transients
    blocks: dict[str, BlockCost]  # by block type


@dataclass(frozen=True)
class Plan:
    """How many blocks of each type take each choice, and what the model predicts for it."""

    counts: dict[str, dict[str, int]]  # block type -> choice -> number of blocks
    peak_bytes: float
    recompute_s: float


class PlanDoesNotFit(Exception):
    """Even full checkpointing of every block exceeds the budget."""


def plan_checkpointing(model: MemoryModel, budget_bytes: float) -> Plan:
    """The plan with the least recompute whose predicted peak is within `budget_bytes` (ties: the
    one that keeps less). Raises PlanDoesNotFit, saying what the cheapest plan needs."""
    frontier: list[tuple[float, float, dict[str, dict[str, int]]]] = [(0.0, 0.0, {})]
    for block_type, cost in model.blocks.items():
        options = [
            (sum(n * cost.saved_bytes[c] for c, n in split.items()), sum(n * cost.recompute_s[c] for c, n in split.items()), split)
            for split in _splits(cost.count, splittable=block_type != VISION)
        ]
        frontier = _pareto([(b + ob, s + os_, {**counts, block_type: split}) for b, s, counts in frontier for ob, os_, split in options])
    fitting = [(s, b, counts) for b, s, counts in frontier if model.fixed_bytes + b <= budget_bytes]
    if not fitting:
        least = min(b for b, _, _ in frontier)
        raise PlanDoesNotFit(
            f"even full checkpointing of every block needs {(model.fixed_bytes + least) / 2**30:.1f} GiB "
            f"({model.fixed_bytes / 2**30:.1f} GiB of it weights, gradients, optimizer states and transients), over the "
            f"budget of {budget_bytes / 2**30:.1f} GiB"
        )
    seconds, saved, counts = min(fitting, key=lambda item: (item[0], item[1]))
    return Plan(counts=counts, peak_bytes=model.fixed_bytes + saved, recompute_s=seconds)


def plan_section(plan: Plan, text_layer_types: list[str], *, placement: str) -> dict:
    """The plan as the spec's `activation_checkpointing` section (mode `selective`), which is what
    the resolved spec records and what parallelize applies. Within a text type, the first layers
    are checkpointed fully, the next op-level, the rest not at all (the peak does not depend on
    which ones: every block's saved activations are alive together at the end of the forward)."""
    full_layers: list[str | int] = []
    op_level: list[str | int] = []
    for block_type, counts in plan.counts.items():
        if block_type == VISION:
            for choice, target in (("full", full_layers), ("op_level", op_level)):
                if counts.get(choice):
                    target.append(block_type)
            continue
        indices = [i for i, t in enumerate(text_layer_types) if t == block_type]
        n_full, n_op = counts.get("full", 0), counts.get("op_level", 0)
        full_layers += indices[:n_full]
        op_level += indices[n_full:n_full + n_op]
    section: dict = {"mode": "selective", "placement": placement}
    if full_layers:
        section["layers"] = full_layers
    if op_level:
        section["op_level"] = op_level
    if not full_layers and not op_level:
        section = {"mode": "none", "placement": placement}
    return section


def describe(plan: Plan) -> str:
    """One log line: e.g. `linear: 10 none, 14 full; full: 8 op_level; vision: 24 full; peak 39.2 GiB`."""
    parts = []
    for block_type, counts in plan.counts.items():
        parts.append(f"{block_type}: " + ", ".join(f"{n} {choice}" for choice, n in counts.items() if n))
    return "; ".join(parts) + f"; predicted peak {plan.peak_bytes / 2**30:.1f} GiB, recompute {plan.recompute_s * 1e3:.0f} ms/step"


def _splits(count: int, *, splittable: bool) -> list[dict[str, int]]:
    if not splittable:
        return [{choice: count if choice == chosen else 0 for choice in CHOICES} for chosen in CHOICES]
    return [
        {"none": none, "op_level": op, "full": count - none - op}
        for none in range(count + 1) for op in range(count - none + 1)
    ]


def _pareto(points: list[tuple[float, float, dict]]) -> list[tuple[float, float, dict]]:
    """The points no other point beats in both bytes and seconds."""
    kept: list[tuple[float, float, dict]] = []
    for point in sorted(points, key=lambda p: (p[0], p[1])):
        if not kept or point[1] < kept[-1][1]:
            kept.append(point)
    return kept
