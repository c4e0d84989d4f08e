"""A float64, token-by-token gated delta rule: the slow, obviously-right oracle for every delta_rule op.

Shared by the CPU tests (the `hf` chunked op) and the GPU tests (the `fast` fla op).
"""

from __future__ import annotations

import torch


def recurrent_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """One sequence per row, zero initial state, computed in float64 one token at a time.

    q, k: [B, T, Hk, Dk]; v: [B, T, Hv, Dv]; g (log decay), beta: [B, T, Hv] -> [B, T, Hv, Dv] float64.
    Key head h serves value heads h·G .. h·G + G - 1 (G = Hv / Hk); q, k are l2-normalised
    (eps 1e-6 inside the sqrt, as fla) and q is scaled by Dk**-0.5. Per token and value head:
        S <- exp(g) S;  S <- S + k (β (v - Sᵀk))ᵀ;  o = Sᵀ q          (S: [Dk, Dv])
    """
    q, k, v, g, beta = (x.to(torch.float64) for x in (q, k, v, g, beta))
    group = v.shape[2] // k.shape[2]
    q, k = (x.repeat_interleave(group, dim=2) for x in (q, k))
    q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6) * q.shape[-1] ** -0.5
    k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)

    batch, seq_len, heads, k_dim = k.shape
    state = torch.zeros(batch, heads, k_dim, v.shape[-1], dtype=torch.float64, device=v.device)
    out = torch.empty(batch, seq_len, heads, v.shape[-1], dtype=torch.float64, device=v.device)
    for t in range(seq_len):
        state = state * g[:, t].exp()[..., None, None]
        predicted = torch.einsum("bhkv,bhk->bhv", state, k[:, t])
        correction = beta[:, t, :, None] * (v[:, t] - predicted)
        state = state + torch.einsum("bhk,bhv->bhkv", k[:, t], correction)
        out[:, t] = torch.einsum("bhkv,bhk->bhv", state, q[:, t])
    return out


def packed_recurrent_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, cu_seqlens: torch.Tensor
) -> torch.Tensor:
    """`recurrent_gated_delta_rule` restarted at every document of a packed batch.

    Inputs as above ([B, T, ...]); cu_seqlens [D + 1]: document boundaries over the flattened B*T
    tokens (no document spans two rows). -> [B, T, Hv, Dv] float64.
    """
    batch, seq_len = v.shape[:2]
    flat = [x.reshape(batch * seq_len, *x.shape[2:]) for x in (q, k, v, g, beta)]
    bounds = cu_seqlens.tolist()
    pieces = [
        recurrent_gated_delta_rule(*(x[start:end].unsqueeze(0) for x in flat))[0]
        for start, end in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(pieces).reshape(batch, seq_len, *pieces[0].shape[1:])
