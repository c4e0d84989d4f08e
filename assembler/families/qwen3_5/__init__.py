"""Qwen3.5: a vision tower and a hybrid Gated DeltaNet / gated-attention text tower
(transformers' `Qwen3_5ForConditionalGeneration`)."""

from __future__ import annotations

from typing import Iterator

from torch import nn

from assembler.families.qwen3_5 import hf_config
from assembler.model.family import BlockRef, ModelFamily, register_family
from assembler.spec.validation import VISION_BLOCK_TYPE  # the vision blocks' name in compile / checkpointing policies
from assembler.spec.sections import MtpSettings
from assembler.model.towers import build_multi_token_prediction, build_text_tower, build_vision_tower, text_blocks, text_summary_rows
from blocks.ops import OpTable
from blocks.vision_language_model import SpecialTokens, VisionLanguageModel

VISUAL_PREFIX = "model.visual"
TEXT_PREFIX = "model.language_model"
MTP_PREFIX = "mtp"  # the released checkpoints' multi-token-prediction head: `mtp.*`


class Qwen3_5(ModelFamily):
    name = "qwen3_5"
    hf_model_types = ("qwen3_5",)
    # The Gated DeltaNet's log decay rate (bf16 would shift every token's decay) and its gated
    # RMSNorm weight, kept fp32 as the released checkpoints keep them.
    fp32_export_suffixes = (".linear_attn.A_log", ".linear_attn.norm.weight")
    supports_mtp = True

    def build(self, model_spec: dict, ops: OpTable) -> VisionLanguageModel:
        vision, mtp = model_spec.get("vision"), model_spec.get("mtp")
        return VisionLanguageModel(
            visual=build_vision_tower(vision, ops) if vision else None,
            language_model=build_text_tower(model_spec["text"], ops),
            tokens=SpecialTokens(**model_spec["tokens"]),
            spatial_merge_size=vision["spatial_merge_size"] if vision else 1,
            tie_word_embeddings=model_spec["text"]["tie_word_embeddings"],
            ops=ops,
            mtp=build_multi_token_prediction(model_spec["text"], MtpSettings.of(mtp), ops) if mtp is not None else None,
        )

    def blocks(self, model: nn.Module) -> Iterator[BlockRef]:
        visual = model.model.visual
        if visual is not None:
            for index, block in enumerate(visual.blocks):
                yield BlockRef(f"{VISUAL_PREFIX}.blocks.{index}", block, VISION_BLOCK_TYPE)
        yield from text_blocks(model.model.language_model, TEXT_PREFIX)
        if model.mtp is not None:  # after the tower's layers: text layer indices keep meaning the tower's
            yield from text_blocks(model.mtp, MTP_PREFIX)

    def init_std(self, model_spec: dict, module_path: str) -> float:
        if module_path.startswith(VISUAL_PREFIX) and model_spec.get("vision"):
            return model_spec["vision"]["initializer_range"]
        return model_spec["text"]["initializer_range"]

    def towers(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"vision": model.model.visual} if model.model.visual is not None else {}

    def summary_rows(self, model: nn.Module) -> list[tuple[str, str, nn.Module]]:
        rows = []
        visual = model.model.visual
        if visual is not None:
            rows.append((f"{VISUAL_PREFIX}.patch_embed", "vision patch embedding", visual.patch_embed))
            rows.append((f"{VISUAL_PREFIX}.pos_embed", "vision position embedding", visual.pos_embed))
            rows += [(ref.path, "vision block", ref.module) for ref in self.blocks(model) if ref.block_type == VISION_BLOCK_TYPE]
            rows.append((f"{VISUAL_PREFIX}.merger", "patch merger", visual.merger))
        rows += text_summary_rows(model, model.model.language_model, TEXT_PREFIX)
        if model.mtp is not None:
            rows.append((MTP_PREFIX, "multi-token-prediction head", model.mtp))
        return rows

    def model_from_hf(self, config: dict, where: str | None) -> tuple[dict, list]:
        return hf_config.model_from_hf(config, where)

    def hf_config(self, spec, dtype: str) -> dict:  # noqa: ANN001 (Spec)
        return hf_config.hf_config_from_spec(spec, dtype)


FAMILY = register_family(Qwen3_5())
