"""Spec → nn.Module: instantiate registered blocks into the full vision-language model.

The spec's block sections are the blocks' constructor keyword arguments (minus `block`); the few
arguments a block needs from elsewhere in the spec (hidden size, norm types, eps, the op table)
are added here, in one visible place.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from assembler.initialize import initialize_weights
from assembler.spec import Spec
from assembler.spec_errors import UserError
from blocks.decoder_layer import DecoderLayer
from blocks.ops import AUTO, OpTable, chosen_backends, resolve_ops, unmet_fast_requirements
from blocks.registry import get_block
from blocks.rope import TextRotaryEmbedding
from blocks.text_tower import TextTower
from blocks.vision_language_model import SpecialTokens, VisionLanguageModel

ZERO_CENTERED = "zero_centered"


def resolve_spec_ops(spec: Spec) -> OpTable:
    """The op table the spec selects: `ops.backend` for all ops, then `ops.overrides` per op
    (`auto` decided for this machine; `assemble train` decides it first, in `decide_auto_ops`)."""
    return resolve_ops(spec.ops["backend"], spec.ops.get("overrides") or {}, compute_dtype=compute_dtype(spec, sharded=True))


def compute_dtype(spec: Spec, *, sharded: bool) -> str:
    """The dtype the model's matmuls run in: FSDP2's `parallel.fsdp.param_dtype` when sharded (every
    GPU run), else the parameters' own `train.dtype` (a plain CPU process; no autocast anywhere)."""
    return spec.parallel["fsdp"]["param_dtype"] if sharded else spec.train["dtype"]


def decide_auto_ops(spec: Spec, device_type: str, *, sharded: bool) -> tuple[Spec, str | None]:
    """`ops.backend: auto` decided for `device_type`: (the spec with every op's choice written into
    `ops.overrides`, so its resolved YAML names the ops that ran; a one-line summary for the log).
    Other backends: (spec, None) unchanged."""
    if spec.ops["backend"] != AUTO:
        return spec, None
    chosen = chosen_backends(
        AUTO, spec.ops.get("overrides") or {}, device_type=device_type, compute_dtype=compute_dtype(spec, sharded=sharded)
    )
    decided = dataclasses.replace(spec, ops={**spec.ops, "overrides": chosen})
    fast = [name for name, which in chosen.items() if which == "fast"]
    hf = [name for name, which in chosen.items() if which == "hf"]
    summary = f"ops (auto, {device_type}): fast {', '.join(fast) or '-'}; hf {', '.join(hf) or '-'}"
    return decided, summary


def check_ops_can_train(spec: Spec, device_type: str, *, sharded: bool | None = None) -> None:
    """Refuse up front (UserError) a spec whose `fast` ops cannot run on `device_type` (no CUDA, no
    fla, an fp32 compute dtype for FlashAttention), rather than failing inside the first step.
    `sharded` (default: on CUDA, as every GPU run is) picks the compute dtype, see `compute_dtype`."""
    sharded = device_type == "cuda" if sharded is None else sharded
    dtype = compute_dtype(spec, sharded=sharded)
    chosen = chosen_backends(spec.ops["backend"], spec.ops.get("overrides") or {}, device_type=device_type, compute_dtype=dtype)
    problems = unmet_fast_requirements(chosen, device_type, dtype)
    if problems:
        raise UserError(f"{spec.source or spec.name}: " + "; ".join(problems))


def build_model(
    spec: Spec,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    ops: OpTable | None = None,
    seed: int | None = None,
) -> VisionLanguageModel:
    """Build the model the spec describes.

    On `device="meta"` nothing is allocated and no initialisation runs (load or `initialize_weights`
    after `to_empty`). Otherwise parameters are initialised as the reference initialises them
    (seeded by `seed` when given) and cast to `dtype`.
    """
    ops = ops or resolve_spec_ops(spec)
    model_spec = spec.model
    with torch.device(device):
        model = VisionLanguageModel(
            visual=_build_vision(model_spec["vision"], ops) if model_spec.get("vision") else None,
            language_model=_build_text(model_spec["text"], ops),
            tokens=SpecialTokens(**model_spec["tokens"]),
            spatial_merge_size=model_spec["vision"]["spatial_merge_size"] if model_spec.get("vision") else 1,
            tie_word_embeddings=model_spec["text"]["tie_word_embeddings"],
            ops=ops,
        )
    if torch.device(device).type != "meta":
        if seed is not None:
            torch.manual_seed(seed)
        initialize_weights(model, spec)
        model.to(dtype)
    return model


# The `norms` entry each mixer block takes its inner norm's flavour from (keyword, norms key).
MIXER_NORMS = {"gated_attention": ("qk_norm_type", "qk"), "gated_deltanet": ("gate_norm_type", "deltanet_gate")}


def _build_text(text: dict, ops: OpTable) -> TextTower:
    hidden_size, eps, norms = text["hidden_size"], text["rms_norm_eps"], text["norms"]

    def rms_norm(dim: int, norm_type: str) -> nn.Module:
        return get_block("norm", "rms_norm")(dim, eps=eps, zero_centered=norm_type == ZERO_CENTERED, ops=ops)

    def block(kind: str, section: dict, **extra) -> nn.Module:  # noqa: ANN003
        settings = dict(section)
        return get_block(kind, settings.pop("block"))(**settings, **extra, hidden_size=hidden_size, ops=ops)

    def mixer(section: dict) -> nn.Module:
        keyword, norm = MIXER_NORMS.get(section["block"], (None, None))
        extra = {keyword: norms[norm]} if keyword else {}
        return block("mixer", section, **extra, rms_norm_eps=eps)

    layers = [
        DecoderLayer(
            mixer=mixer(text["layer_types"][layer_type]["mixer"]),
            mlp=block("mlp", text["layer_types"][layer_type]["mlp"]),
            input_layernorm=rms_norm(hidden_size, norms["layer"]),
            post_attention_layernorm=rms_norm(hidden_size, norms["layer"]),
            layer_type=layer_type,
        )
        for layer_type in text["layers"]
    ]
    # One rotary embedding for the tower, sized by the attention mixers' head_dim (validation
    # makes them agree); a tower without attention gets an empty one.
    head_dims = [lt["mixer"]["head_dim"] for lt in text["layer_types"].values() if "head_dim" in lt["mixer"]]
    rope = text["rope"]
    rotary = TextRotaryEmbedding(
        head_dim=head_dims[0] if head_dims else 0,
        partial_rotary_factor=rope["partial_rotary_factor"],
        theta=rope["theta"],
        mrope_section=rope["mrope_section"],
        mrope_interleaved=rope["mrope_interleaved"],
    )
    return TextTower(
        embed_tokens=nn.Embedding(text["vocab_size"], hidden_size),
        layers=layers,
        norm=rms_norm(hidden_size, norms["final"]),
        rotary_emb=rotary,
    )


def _build_vision(vision: dict, ops: OpTable) -> nn.Module:
    section = {k: v for k, v in vision.items() if k not in ("block", "merger", "initializer_range")}
    merger_section = dict(vision["merger"])
    merger = get_block("merger", merger_section.pop("block"))(
        **merger_section, hidden_size=vision["hidden_size"], spatial_merge_size=vision["spatial_merge_size"], ops=ops
    )
    return get_block("vision", vision["block"])(**section, merger=merger, ops=ops)
