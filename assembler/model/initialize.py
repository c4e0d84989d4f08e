"""Random initialisation, as transformers initialises its models (so a fresh model is distributed
as the reference's).

One function walks the model so a model built on the meta device can be materialised
(`to_empty`) and initialised in place; torch's layers get the tower's normal init here, and every
block initialises its own parameters in `reset_parameters()` (nothing here knows a block).
"""

from __future__ import annotations

import torch
from torch import nn

from assembler.model.family import family_of
from assembler.spec import Spec


@torch.no_grad()
def initialize_weights(model: nn.Module, spec: Spec) -> None:
    """Initialise every parameter and recompute every non-persistent buffer of `model` in place.

    torch's own layers: Linear / conv / embedding weights ~ N(0, the family's `init_std`: their
    tower's initializer_range), biases 0; LayerNorm (1, 0). Every other module with parameters of
    its own initialises them in its `reset_parameters()` (RMSNorm: 0 when zero-centered, else 1;
    the Gated DeltaNet's dt_bias and A_log), and one with derived buffers (rotary inverse
    frequencies) recomputes them in its `reset_buffers()`. Modules are visited in registration
    order, so the random stream is the same for a model built directly and one materialised from
    the meta device.
    """
    family = family_of(spec)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv3d, nn.Embedding)):
            module.weight.normal_(0.0, family.init_std(spec.model, name))
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False)):
            module.reset_parameters()
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    if getattr(model, "tie_word_embeddings", False):
        model.tie_weights()
