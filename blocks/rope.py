"""Multimodal rotary embedding (mRoPE) of the text tower, and its partial application to q and k.

Each token has three positions (temporal, height, width); text tokens have all three equal. The
rotary frequencies are shared out between the three axes by `mrope_section`; Qwen3.5 interleaves
them (frequency i follows axis i mod 3 while that axis has frequencies left), Qwen2-VL style
models give each axis a contiguous block. Only the first `partial_rotary_factor` of the head dim
rotates; the rest passes through.
"""

from __future__ import annotations

import torch

from blocks.fp32_rotary_buffer import Fp32InverseFrequencies


class TextRotaryEmbedding(Fp32InverseFrequencies):
    """(cos, sin), each [B, T, rotary_dim] in x's dtype, from mRoPE positions [3, B, T].

    Bitwise transformers' `Qwen3_5TextRotaryEmbedding` (default rope type, interleaved mRoPE):
    angles, cos and sin in fp32 from an fp32 `inv_freq`, cast to the activation dtype at the end.
    """

    inv_freq: torch.Tensor

    def __init__(
        self,
        *,
        head_dim: int,
        partial_rotary_factor: float,
        theta: float,
        mrope_section: list[int],
        mrope_interleaved: bool,
    ) -> None:
        super().__init__()
        self.rotary_dim = int(head_dim * partial_rotary_factor)
        self.theta = theta
        self.mrope_section = list(mrope_section)
        self.mrope_interleaved = mrope_interleaved
        # head_dim 0 is what the assembler passes for a model without full-attention layers: the
        # embedding is then never read, so the sections need not add up.
        if head_dim and (len(self.mrope_section) != 3 or sum(self.mrope_section) != self.rotary_dim // 2):
            raise ValueError(
                f"rope.mrope_section {self.mrope_section} must be 3 numbers (temporal, height, width) adding up "
                f"to rotary_dim / 2 = {self.rotary_dim // 2} (head_dim {head_dim} x partial_rotary_factor "
                f"{partial_rotary_factor} = rotary_dim {self.rotary_dim})"
            )
        self._register_inv_freq()  # fp32 across casts: see Fp32InverseFrequencies

    def _compute_inv_freq(self) -> torch.Tensor:
        """[rotary_dim // 2] fp32, computed on the CPU exactly as transformers does at model init."""
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float, device="cpu") / self.rotary_dim
        return (1.0 / (self.theta**exponents)).to(torch.get_default_device())


    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: any tensor of the activation dtype/device; position_ids [3, B, T] -> cos, sin [B, T, rotary_dim]."""
        position_ids = position_ids.expand(3, -1, -1)
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)  # [3, B, T, F]
        cos = self._recompose(freqs.cos())
        sin = self._recompose(freqs.sin())
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    def _recompose(self, per_axis: torch.Tensor) -> torch.Tensor:
        """[3, B, T, F] per-axis values -> [B, T, 2F]: each frequency from its axis, then repeated for rotate_half."""
        if self.mrope_interleaved:
            # transformers' `recomposition_frequencies`: start from the temporal axis and overwrite
            # frequencies 1, 4, 7, ... with height's and 2, 5, 8, ... with width's, up to 3x their sections.
            combined = per_axis[0].clone()
            for axis in (1, 2):
                picked = slice(axis, self.mrope_section[axis] * 3, 3)
                combined[..., picked] = per_axis[axis, ..., picked]
        else:
            chunks = per_axis.split(self.mrope_section, dim=-1)
            combined = torch.cat([chunk[axis] for axis, chunk in enumerate(chunks)], dim=-1)
        return torch.cat((combined, combined), dim=-1)

    def extra_repr(self) -> str:
        return (
            f"rotary_dim={self.rotary_dim}, theta={self.theta}, mrope_section={self.mrope_section}, "
            f"mrope_interleaved={self.mrope_interleaved}"
        )


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first rotary_dim channels of q [B, Hq, T, D] and k [B, Hkv, T, D]; the rest pass through.

    cos, sin: [B, T, rotary_dim]. transformers' `apply_rotary_pos_emb` (partial rotary): computed
    in the dtype the operands promote to (cos/sin come in the activation dtype).
    """
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    rotary_dim = cos.shape[-1]
    q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]
    k_rot, k_pass = k[..., :rotary_dim], k[..., rotary_dim:]
    q_embed = (q_rot * cos) + (_rotate_half(q_rot) * sin)
    k_embed = (k_rot * cos) + (_rotate_half(k_rot) * sin)
    return torch.cat([q_embed, q_pass], dim=-1), torch.cat([k_embed, k_pass], dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)
