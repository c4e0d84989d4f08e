"""Parameter counts and the per-block table printed by `assemble build --summary`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from assembler.model.family import family_of_model


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    text: int  # embeddings, decoder layers, final norm (a tied LM head counts once)
    vision: int  # vision tower with its merger


@dataclass(frozen=True)
class BlockRow:
    index: int
    name: str  # module path, e.g. model.language_model.layers.3
    kind: str  # e.g. decoder layer (full: gated_attention)
    parameters: int


def _count(module: nn.Module) -> int:
    # parameters() de-duplicates shared tensors, so a tied LM head is counted once.
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: nn.Module) -> ParameterCounts:
    vision = sum(_count(tower) for tower in family_of_model(model).towers(model).values())
    total = _count(model)
    return ParameterCounts(total=total, text=total - vision, vision=vision)


def block_rows(model: nn.Module) -> list[BlockRow]:
    """One row per top-level block in forward order (its family's `summary_rows`: e.g. vision
    pieces, embeddings, layers, norm, head)."""
    rows = family_of_model(model).summary_rows(model)
    return [BlockRow(i, name, kind, _count(module)) for i, (name, kind, module) in enumerate(rows)]


def format_summary(model: nn.Module, spec_name: str) -> str:
    """The table `assemble build --summary` prints."""
    rows = block_rows(model)
    width = max(len(r.name) for r in rows)
    kind_width = max(len(r.kind) for r in rows)
    lines = [f"{spec_name}", f"{'#':>4}  {'block':<{width}}  {'type':<{kind_width}}  {'parameters':>15}"]
    lines += [f"{r.index:>4}  {r.name:<{width}}  {r.kind:<{kind_width}}  {r.parameters:>15,}" for r in rows]
    counts = parameter_counts(model)
    lines += ["", f"text tower:               {counts.text:>15,}"]
    if family_of_model(model).towers(model):  # a text-only model has no vision line
        lines.append(f"vision tower with merger: {counts.vision:>15,}")
    lines.append(f"total:                    {counts.total:>15,}")
    return "\n".join(lines)
