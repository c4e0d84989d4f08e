"""The numerical oracle: tiny transformers Qwen3.5 configs and helpers shared by the parity tests.

Parity tests compare our blocks with transformers' Qwen3.5 modeling code (eager attention) at toy
size. The sizes below mirror specs/qwen3_5_tiny.yaml, except the vocabulary, which is kept small so
the tests stay fast.

Transformers is pinned to the range the parity tests were last run against (TESTED_TRANSFORMERS).
Its Qwen3.5 code is our definition of "correct", so a new transformers release can silently change
the target. When the installed version leaves the range, importing this module fails: re-run the
parity tests with the new version (`python -m pytest tests -q -k "parity or norms or rope"`), fix
any mismatch (or confirm there is none), then widen TESTED_TRANSFORMERS here and the runtime
dependency in pyproject.toml alike (tests/test_project_files.py holds them equal).
"""

from __future__ import annotations

import torch
import transformers
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from torch import nn
from transformers import Qwen3_5Config, Qwen3_5TextConfig, Qwen3_5VisionConfig

TESTED_TRANSFORMERS = ">=5.17,<5.25"

if Version(transformers.__version__) not in SpecifierSet(TESTED_TRANSFORMERS):
    raise RuntimeError(
        f"transformers {transformers.__version__} is outside the range the Qwen3.5 parity tests were "
        f"last checked against ({TESTED_TRANSFORMERS}, tests/oracle.py). Re-run the parity tests "
        "with this version, fix any mismatch, then widen TESTED_TRANSFORMERS in tests/oracle.py and pyproject.toml's dependency."
    )

# Mirrors specs/qwen3_5_tiny.yaml (model.text), with a small vocabulary.
TINY_TEXT = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_conv_kernel_dim=4,
    rms_norm_eps=1e-6,
    max_position_embeddings=4096,
    tie_word_embeddings=True,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 10000000.0,
        "partial_rotary_factor": 0.25,
        "mrope_section": [2, 1, 1],
        "mrope_interleaved": True,
    },
)

# Mirrors specs/qwen3_5_tiny.yaml (model.vision).
TINY_VISION = dict(
    depth=2,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    in_channels=3,
    patch_size=16,
    temporal_patch_size=2,
    spatial_merge_size=2,
    num_position_embeddings=64,
    out_hidden_size=64,
    rope_parameters={"rope_type": "axial", "rope_theta": 10000.0},
)

TINY_TOKENS = dict(image_token_id=248056, video_token_id=248057, vision_start_token_id=248053, vision_end_token_id=248054)


def tiny_text_config(**overrides) -> Qwen3_5TextConfig:
    """A toy Qwen3_5TextConfig (eager attention); keyword overrides replace TINY_TEXT entries."""
    config = Qwen3_5TextConfig(**{**TINY_TEXT, **overrides})
    config._attn_implementation = "eager"
    return config


def tiny_vision_config(**overrides) -> Qwen3_5VisionConfig:
    """A toy Qwen3_5VisionConfig (eager attention); keyword overrides replace TINY_VISION entries."""
    config = Qwen3_5VisionConfig(**{**TINY_VISION, **overrides})
    config._attn_implementation = "eager"
    return config


def tiny_config(text: dict | None = None, vision: dict | None = None, **overrides) -> Qwen3_5Config:
    """A toy Qwen3_5Config (text + vision, eager attention everywhere). The image token ids are the
    real ones, so a test that feeds image tokens needs a text vocab_size above them."""
    config = Qwen3_5Config(
        text_config={**TINY_TEXT, **(text or {})},
        vision_config={**TINY_VISION, **(vision or {})},
        tie_word_embeddings=(text or {}).get("tie_word_embeddings", TINY_TEXT["tie_word_embeddings"]),
        **{**TINY_TOKENS, **overrides},
    )
    for sub in (config, config.text_config, config.vision_config):
        sub._attn_implementation = "eager"
    return config


@torch.no_grad()
def randomize_parameters_(module: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Overwrite every parameter with N(0, std²) noise, in place.

    Zero-initialised weights (the zero-centered norms' w) get noise too, so tests exercise the
    (1 + w) path and not just 1 · x̂.
    """
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * std
        parameter.copy_(noise.to(parameter.dtype))
    return module


def reference_position_embeddings(
    config: Qwen3_5TextConfig, position_ids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [B, T, rotary_dim] as transformers' Qwen3.5 text model computes them in `dtype`.

    position_ids: [3, B, T] mRoPE positions (temporal, height, width).
    A model loaded with from_pretrained(dtype=bfloat16) keeps the rotary `inv_freq` in fp32 (it is a
    non-persistent buffer computed at init), so cos/sin are computed in fp32 and cast to the
    activation dtype at the end; the rotary module is kept fp32 here for the same reason.
    """
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5TextRotaryEmbedding

    rotary = Qwen3_5TextRotaryEmbedding(config)
    dummy = torch.empty(0, dtype=dtype)
    return rotary(dummy, position_ids)
