"""Random initialisation, as transformers initialises Qwen3.5 (so a fresh model is the reference's).

Kept outside the blocks so a model built on the meta device can be materialised (`to_empty`) and
initialised in place by one function; the blocks' constructors only decide shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from assembler.spec import Spec


@torch.no_grad()
def initialize_weights(model: nn.Module, spec: Spec) -> None:
    """Initialise every parameter and recompute every non-persistent buffer of `model` in place.

    Linear / conv / embedding weights ~ N(0, initializer_range) of their tower, biases 0;
    LayerNorm (1, 0); RMSNorm 0 when zero-centered (x̂·(1+w)) else 1; the DeltaNet's dt_bias 1 and
    A_log = log U(0.01, 16). Modules with derived buffers (rotary inverse frequencies) recompute
    them through their `reset_buffers()`.
    """
    text_std = spec.model["text"]["initializer_range"]
    vision_std = spec.model["vision"]["initializer_range"] if spec.model.get("vision") else text_std
    for name, module in model.named_modules():
        std = vision_std if name.startswith("model.visual") else text_std
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv3d, nn.Embedding)):
            module.weight.normal_(0.0, std)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif hasattr(module, "zero_centered") and isinstance(getattr(module, "weight", None), nn.Parameter):
            module.weight.fill_(0.0 if module.zero_centered else 1.0)
        elif "GatedRMSNorm" in type(module).__name__:
            module.weight.fill_(1.0)
        if hasattr(module, "A_log") and hasattr(module, "dt_bias"):
            module.dt_bias.fill_(1.0)
            module.A_log.copy_(torch.empty_like(module.A_log, dtype=torch.float32).uniform_(0.01, 16).log_())
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    if getattr(model, "tie_word_embeddings", False):
        model.tie_weights()
