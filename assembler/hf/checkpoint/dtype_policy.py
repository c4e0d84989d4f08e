"""Which dtype each tensor is written in, as the family's released checkpoints store it.

Everything is `EXPORT_DTYPE` (bf16) except the tensors whose names end with one of the family's
`fp32_export_suffixes` (Qwen3.5: the Gated DeltaNet's `A_log`, the log decay rate, where bf16
would shift every token's decay, and its gated RMSNorm weight). A tied `lm_head.weight` is the
embedding and is not written at all (transformers re-ties it on load).
"""

from __future__ import annotations

import torch

EXPORT_DTYPE = torch.bfloat16
TIED_HEAD_KEY = "lm_head.weight"


def model_export_dtype(spec) -> torch.dtype:  # noqa: ANN001 (Spec)
    """The dtype an export of `spec`'s model is written in unless `assemble export --dtype` says
    otherwise, for the run's own `hf/` and `assemble export` alike: the dtype the model computes in,
    `parallel.fsdp.param_dtype` (the tiny spec's fp32, whose export gives the trained model's logits;
    bf16 for the 4B and for an HF folder read without a spec, as released)."""
    from blocks.constants import DTYPES

    return DTYPES[spec.settings.parallel.fsdp.param_dtype]


def export_dtype(name: str, default: torch.dtype = EXPORT_DTYPE, *, fp32_suffixes: tuple[str, ...]) -> torch.dtype:
    """The dtype tensor `name` is written in: fp32 when it ends with one of `fp32_suffixes`
    (the family's `fp32_export_suffixes`), else `default`."""
    return torch.float32 if name.endswith(fp32_suffixes) else default


def is_written(name: str, tie_word_embeddings: bool) -> bool:
    """False for the LM head when it is tied to the embedding (the checkpoint holds it once)."""
    return not (tie_word_embeddings and name == TIED_HEAD_KEY)
