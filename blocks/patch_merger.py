"""The patch merger (HF `model.visual.merger`): vision patches -> tokens of the text tower.

Every `spatial_merge_size**2` consecutive patches (one merge block, as the vision tower orders
them) become one token:

    norm (LayerNorm over the vision hidden, per patch, before the shuffle)
    -> view [N / merge**2, hidden * merge**2] -> linear_fc1 -> GELU (exact erf) -> linear_fc2
"""

from __future__ import annotations

import torch
from torch import nn

from blocks.ops import OpTable
from blocks.registry import register


@register("merger", "patch_merger")
class PatchMerger(nn.Module):
    """[N, hidden_size] -> [N / spatial_merge_size**2, out_hidden_size]."""

    # Its spec section's settings (assembled into the spec schema; `block` is added there).
    settings_schema = {
        "description": ("Folds spatial_merge_size² neighbouring patches into one token and projects it to the text "
                        "tower's width."),
        "properties": {
            "out_hidden_size": {
                "type": "integer",
                "description": "Output width; must equal model.text.hidden_size.",
                "minimum": 1,
                "maximum": 65536
            }
        },
        "required": [
            "out_hidden_size"
        ]
    }

    def __init__(self, *, hidden_size: int, spatial_merge_size: int, out_hidden_size: int, ops: OpTable | None = None):
        super().__init__()
        self.spatial_merge_unit = spatial_merge_size**2
        self.hidden_size = hidden_size * self.spatial_merge_unit  # width after the shuffle
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.linear_fc1 = nn.Linear(self.hidden_size, self.hidden_size)
        self.act_fn = nn.GELU()  # exact GELU, unlike the tower's tanh-approximate one (as in HF)
        self.linear_fc2 = nn.Linear(self.hidden_size, out_hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % self.spatial_merge_unit:
            raise ValueError(
                f"patch merger: {x.shape[0]} patches is not a multiple of spatial_merge_size**2="
                f"{self.spatial_merge_unit}; every image grid's height and width must be multiples of the merge size"
            )
        x = self.norm(x).view(-1, self.hidden_size)
        return self.linear_fc2(self.act_fn(self.linear_fc1(x)))
