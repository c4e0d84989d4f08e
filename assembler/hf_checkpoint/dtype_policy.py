"""Which dtype each tensor is written in, as in the released Qwen3.5 checkpoints.

Everything is bf16 except the Gated DeltaNet's `A_log` (the log decay rate: bf16 would shift every
token's decay) and its gated RMSNorm weight `linear_attn.norm.weight`, both kept fp32. A tied
`lm_head.weight` is the embedding and is not written at all (transformers re-ties it on load).
"""

from __future__ import annotations

import torch

EXPORT_DTYPE = torch.bfloat16
FP32_TENSOR_SUFFIXES = (".linear_attn.A_log", ".linear_attn.norm.weight")
TIED_HEAD_KEY = "lm_head.weight"
TIED_EMBEDDING_KEY = "model.language_model.embed_tokens.weight"


def export_dtype(name: str, default: torch.dtype = EXPORT_DTYPE) -> torch.dtype:
    """The dtype tensor `name` is written in: fp32 for the listed DeltaNet tensors, else `default`."""
    return torch.float32 if name.endswith(FP32_TENSOR_SUFFIXES) else default


def is_written(name: str, tie_word_embeddings: bool) -> bool:
    """False for the LM head when it is tied to the embedding (the checkpoint holds it once)."""
    return not (tie_word_embeddings and name == TIED_HEAD_KEY)
