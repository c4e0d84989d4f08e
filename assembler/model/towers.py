"""Spec sections → the towers families compose: the decoder text tower and the vision tower.

A block section's settings are the block's constructor keywords (minus `block`). Besides them a
text block gets `hidden_size` and the op table, plus the keywords its class's `tower_settings`
maps to settings of the text tower (e.g. `{"rms_norm_eps": "rms_norm_eps", "qk_norm_type":
"norms.qk"}`): the one visible place where a block reads beyond its own section.
"""

from __future__ import annotations

from typing import Iterator

from torch import nn

from assembler.model.family import BlockRef
from assembler.spec.sections import MtpSettings
from blocks.decoder_layer import DecoderLayer
from blocks.multi_token_prediction import MultiTokenPrediction
from blocks.ops import OpTable
from blocks.registry import get_block
from blocks.rope import TextRotaryEmbedding
from blocks.text_tower import TextTower

ZERO_CENTERED = "zero_centered"  # the norm flavour x̂·(1+w); `default` is x̂·w


def build_text_tower(text: dict, ops: OpTable) -> TextTower:
    """The decoder of `model.text`: embedding, one DecoderLayer per entry of `layers` (its layer
    type's mixer and MLP), final norm, and the rotary embedding the attention mixers read."""
    return TextTower(
        embed_tokens=nn.Embedding(text["vocab_size"], text["hidden_size"]),
        layers=[build_decoder_layer(text, layer_type, ops) for layer_type in text["layers"]],
        norm=_rms_norm(text, text["norms"]["final"], ops),
        rotary_emb=_rotary_embedding(text),
    )


def build_decoder_layer(text: dict, layer_type: str, ops: OpTable) -> DecoderLayer:
    """One pre-norm decoder layer of `model.text`'s layer type `layer_type`."""
    hidden_size = text["hidden_size"]

    def block(kind: str, section: dict) -> nn.Module:
        settings = dict(section)
        cls = get_block(kind, settings.pop("block"))
        from_tower = {keyword: _setting(text, path) for keyword, path in getattr(cls, "tower_settings", {}).items()}
        return cls(**settings, **from_tower, hidden_size=hidden_size, ops=ops)

    sections = text["layer_types"][layer_type]
    return DecoderLayer(
        mixer=block("mixer", sections["mixer"]),
        mlp=block("mlp", sections["mlp"]),
        input_layernorm=_rms_norm(text, text["norms"]["layer"], ops),
        post_attention_layernorm=_rms_norm(text, text["norms"]["layer"], ops),
        layer_type=layer_type,
    )


def build_multi_token_prediction(text: dict, mtp: MtpSettings, ops: OpTable) -> MultiTokenPrediction:
    """The `model.mtp` head over the tower of `model.text`: `num_hidden_layers` decoder layers of
    `mtp.layer_type`; its own norms (before the fc, after the layers) are of the final norm's kind."""
    final = text["norms"]["final"]
    return MultiTokenPrediction(
        hidden_size=text["hidden_size"],
        layers=[build_decoder_layer(text, mtp.layer_type, ops) for _ in range(mtp.num_hidden_layers)],
        pre_fc_norm_embedding=_rms_norm(text, final, ops),
        pre_fc_norm_hidden=_rms_norm(text, final, ops),
        norm=_rms_norm(text, final, ops),
        loss_weight=mtp.loss_weight,
    )


def _rms_norm(text: dict, norm_type: str, ops: OpTable) -> nn.Module:
    return get_block("norm", "rms_norm")(text["hidden_size"], eps=text["rms_norm_eps"], zero_centered=norm_type == ZERO_CENTERED, ops=ops)


def _rotary_embedding(text: dict) -> TextRotaryEmbedding:
    # One rotary embedding for the tower, sized by the attention mixers' head_dim (validation
    # makes them agree); a tower without attention gets an empty one.
    head_dims = [lt["mixer"]["head_dim"] for lt in text["layer_types"].values() if "head_dim" in lt["mixer"]]
    rope = text["rope"]
    return TextRotaryEmbedding(
        head_dim=head_dims[0] if head_dims else 0,
        partial_rotary_factor=rope["partial_rotary_factor"],
        theta=rope["rope_theta"],
        mrope_section=rope["mrope_section"],
        mrope_interleaved=rope["mrope_interleaved"],
    )


def _setting(text: dict, dotted_path: str):  # noqa: ANN202 (any setting's value)
    value = text
    for key in dotted_path.split("."):
        value = value[key]
    return value


def build_vision_tower(vision: dict, ops: OpTable) -> nn.Module:
    """The vision tower of `model.vision`, its patch merger built from `vision.merger`."""
    section = {k: v for k, v in vision.items() if k not in ("block", "merger", "initializer_range")}
    merger_section = dict(vision["merger"])
    merger = get_block("merger", merger_section.pop("block"))(
        **merger_section, hidden_size=vision["hidden_size"], spatial_merge_size=vision["spatial_merge_size"], ops=ops
    )
    return get_block("vision", vision["block"])(**section, merger=merger, ops=ops)


def text_blocks(tower: nn.Module, prefix: str) -> Iterator[BlockRef]:
    """The decoder layers of a text tower (`blocks.text_tower.TextTower`) or of a
    multi-token-prediction head (`mtp`) under `prefix`."""
    for index, layer in enumerate(tower.layers):
        yield BlockRef(f"{prefix}.layers.{index}", layer, layer.layer_type)


def text_summary_rows(model: nn.Module, tower: nn.Module, prefix: str) -> list[tuple[str, str, nn.Module]]:
    """Summary rows of a text tower under `prefix` and of the model's `lm_head`."""
    rows = [(f"{prefix}.embed_tokens", "token embedding", tower.embed_tokens)]
    rows += [(ref.path, f"decoder layer ({ref.block_type}: {type(ref.module.mixer).__name__})", ref.module)
             for ref in text_blocks(tower, prefix)]
    rows.append((f"{prefix}.norm", "final norm", tower.norm))
    tied = model.lm_head.weight is tower.embed_tokens.weight
    rows.append(("lm_head", "LM head (tied to the embedding)" if tied else "LM head", nn.Module() if tied else model.lm_head))
    return rows
