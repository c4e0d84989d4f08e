"""Parameter counts and the per-block table printed by `assemble build --summary`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


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
    visual = model.model.visual
    vision = _count(visual) if visual is not None else 0
    total = _count(model)
    return ParameterCounts(total=total, text=total - vision, vision=vision)


def block_rows(model: nn.Module) -> list[BlockRow]:
    """One row per top-level block in forward order: vision pieces, embeddings, layers, norm, head."""
    rows: list[tuple[str, str, nn.Module]] = []
    visual = model.model.visual
    if visual is not None:
        rows.append(("model.visual.patch_embed", "vision patch embedding", visual.patch_embed))
        rows.append(("model.visual.pos_embed", "vision position embedding", visual.pos_embed))
        for i, block in enumerate(visual.blocks):
            rows.append((f"model.visual.blocks.{i}", "vision block", block))
        rows.append(("model.visual.merger", "patch merger", visual.merger))
    text = model.model.language_model
    rows.append(("model.language_model.embed_tokens", "token embedding", text.embed_tokens))
    for i, layer in enumerate(text.layers):
        mixer = layer.mixer
        rows.append((f"model.language_model.layers.{i}", f"decoder layer ({layer.layer_type}: {type(mixer).__name__})", layer))
    rows.append(("model.language_model.norm", "final norm", text.norm))
    tied = model.lm_head.weight is text.embed_tokens.weight
    head_kind = "LM head (tied to the embedding)" if tied else "LM head"
    rows.append(("lm_head", head_kind, nn.Module() if tied else model.lm_head))
    return [BlockRow(i, name, kind, _count(module)) for i, (name, kind, module) in enumerate(rows)]


def format_summary(model: nn.Module, spec_name: str) -> str:
    """The table `assemble build --summary` prints."""
    rows = block_rows(model)
    width = max(len(r.name) for r in rows)
    kind_width = max(len(r.kind) for r in rows)
    lines = [f"{spec_name}", f"{'#':>4}  {'block':<{width}}  {'type':<{kind_width}}  {'parameters':>15}"]
    lines += [f"{r.index:>4}  {r.name:<{width}}  {r.kind:<{kind_width}}  {r.parameters:>15,}" for r in rows]
    counts = parameter_counts(model)
    lines += [
        "",
        f"text tower:               {counts.text:>15,}",
        f"vision tower with merger: {counts.vision:>15,}",
        f"total:                    {counts.total:>15,}",
    ]
    return "\n".join(lines)
