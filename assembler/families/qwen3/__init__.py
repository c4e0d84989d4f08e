"""Qwen3 dense text models (transformers' `Qwen3ForCausalLM`), built from the same blocks as
Qwen3.5: gated attention without its gate, SwiGLU, default RMSNorms, plain RoPE."""

from __future__ import annotations

from typing import Iterator

from torch import nn

from assembler.model.family import BlockRef, ModelFamily, register_family
from assembler.families.qwen3 import hf_config
from assembler.model.towers import build_text_tower, text_blocks, text_summary_rows
from blocks.causal_language_model import CausalLanguageModel
from blocks.ops import OpTable

TEXT_PREFIX = "model"


class Qwen3(ModelFamily):
    name = "qwen3"
    hf_model_types = (hf_config.MODEL_TYPE,)

    def build(self, model_spec: dict, ops: OpTable) -> CausalLanguageModel:
        text = model_spec["text"]
        return CausalLanguageModel(model=build_text_tower(text, ops), tie_word_embeddings=text["tie_word_embeddings"], ops=ops)

    def blocks(self, model: nn.Module) -> Iterator[BlockRef]:
        yield from text_blocks(model.model, TEXT_PREFIX)

    def init_std(self, model_spec: dict, module_path: str) -> float:
        return model_spec["text"]["initializer_range"]

    def summary_rows(self, model: nn.Module) -> list[tuple[str, str, nn.Module]]:
        return text_summary_rows(model, model.model, TEXT_PREFIX)

    def model_from_hf(self, config: dict, where: str | None) -> tuple[dict, list]:
        return hf_config.model_from_hf(config, where)

    def hf_config(self, spec, dtype: str) -> dict:  # noqa: ANN001 (Spec)
        return hf_config.hf_config_from_spec(spec, dtype)


FAMILY = register_family(Qwen3())
