"""2-D axial rotary embedding of the vision tower (Qwen3.5's `rotary_pos_emb`).

A quarter of the head dim's frequencies rotate by the patch row, a quarter by the patch column;
the [row | col] angles are repeated twice so the rotation (rotate_half) covers the whole head dim.
Angles, cos/sin and the rotation itself are computed in fp32 whatever the model dtype.
"""

from __future__ import annotations

import torch

from blocks.fp32_rotary_buffer import Fp32InverseFrequencies


class VisionRotaryEmbedding(Fp32InverseFrequencies):
    """cos/sin [N, head_dim] (fp32) for patch positions [N, 2] (row, col)."""

    inv_freq: torch.Tensor

    def __init__(self, *, head_dim: int, rope_theta: float):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"vision rotary embedding: head_dim={head_dim} must be a multiple of 4 (two axes x cos/sin halves)")
        self.head_dim = head_dim
        self.rope_theta = rope_theta
        self._register_inv_freq()  # fp32 across casts: see Fp32InverseFrequencies

    def _compute_inv_freq(self) -> torch.Tensor:
        """[head_dim // 4] fp32, computed on the CPU exactly as transformers does at model init."""
        spatial_dim = self.head_dim // 2
        exponents = torch.arange(0, spatial_dim, 2, dtype=torch.float, device="cpu") / spatial_dim
        return (1.0 / (self.rope_theta**exponents)).to(torch.get_default_device())


    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [N, 2] (row, col) -> cos, sin, each [N, head_dim] fp32."""
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=position_ids.device, dtype=torch.float)
        return _axial_layout(freqs.cos()), _axial_layout(freqs.sin())


def _axial_layout(angles: torch.Tensor) -> torch.Tensor:
    """[N, 2, head_dim // 4] -> [N, head_dim]: [row | col | row | col]."""
    row_col = torch.cat([angles[:, 0], angles[:, 1]], dim=-1)
    return torch.cat([row_col, row_col], dim=-1)


def apply_vision_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q, k [N, H, D] by cos, sin [N, D]; computed in fp32, returned in q's and k's dtypes."""
    q_dtype, k_dtype = q.dtype, k.dtype
    q, k = q.float(), k.float()
    cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    q_embed = (q * cos) + (_rotate_half(q) * sin)
    k_embed = (k * cos) + (_rotate_half(k) * sin)
    return q_embed.to(q_dtype), k_embed.to(k_dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)
