"""One pre-norm decoder layer of the text tower: mixer (attention or DeltaNet) then MLP, each residual."""

from __future__ import annotations

import torch
from torch import nn

from blocks.context import TextContext


class DecoderLayer(nn.Module):
    """[B, T, H] -> [B, T, H]: x + mixer(norm(x)), then x + mlp(norm(x)); transformers' `Qwen3_5DecoderLayer`.

    Not a registered block: the assembler composes it from registered ones. The mixer is stored
    under its `hf_attribute` (`self_attn` or `linear_attn`), the name the HF checkpoint uses, so
    parameter names need no renaming; `layer.mixer` reaches it whatever its kind.
    """

    def __init__(
        self,
        *,
        mixer: nn.Module,
        mlp: nn.Module,
        input_layernorm: nn.Module,
        post_attention_layernorm: nn.Module,
        layer_type: str,
    ) -> None:
        super().__init__()
        attribute = getattr(type(mixer), "hf_attribute", None)
        if attribute is None:
            raise TypeError(
                f"decoder layer: mixer {type(mixer).__qualname__} has no class attribute `hf_attribute` naming its "
                "attribute in the HF checkpoint (e.g. 'self_attn', 'linear_attn'); add one to the mixer block"
            )
        self.layer_type = layer_type
        self._mixer_attribute = attribute
        setattr(self, attribute, mixer)
        self.mlp = mlp
        self.input_layernorm = input_layernorm
        self.post_attention_layernorm = post_attention_layernorm

    @property
    def mixer(self) -> nn.Module:
        return getattr(self, self._mixer_attribute)

    def forward(self, hidden_states: torch.Tensor, ctx: TextContext) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states = self.mixer(hidden_states, ctx)
        hidden_states = residual + hidden_states

        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        return residual + hidden_states

    def extra_repr(self) -> str:
        return f"layer_type={self.layer_type!r}"
