"""`hf` delta rule: transformers' torch chunked gated delta rule (Qwen3.5), run per document.

The gated delta rule keeps one state S [Dk, Dv] per value head and, for every token t,
    S = exp(g_t) · S                       (decay)
    S = S + k_t ⊗ β_t (v_t - Sᵀ k_t)        (delta-rule write: correct what S predicts for k_t)
    o_t = Sᵀ q_t
with q and k l2-normalised and q scaled by Dk**-0.5. The chunked form below computes the same
thing 64 tokens at a time with matmuls (a UT transform inside each chunk, a scan over chunks).
It is transformers' `torch_chunk_gated_delta_rule` with use_qk_l2norm_in_kernel=True, op for op,
so the result is bitwise the reference's; only the initial/final-state options are left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blocks.ops.hf_documents import from_padded_documents, to_padded_documents
from blocks.packing import PackingContext

CHUNK_SIZE = 64


def delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *, ctx: PackingContext
) -> torch.Tensor:
    """Chunked gated delta rule; the state starts at zero in every document of `ctx`.

    q, k: [B, T, Hk, Dk]; v: [B, T, Hv, Dv]; g (log decay, <= 0), beta: [B, T, Hv] -> [B, T, Hv, Dv] in q's dtype.
    """
    documents = [to_padded_documents(x, ctx) for x in (q, k, v, g, beta)]  # each [D, max_seqlen, ...]
    return from_padded_documents(chunk_gated_delta_rule(*documents), ctx)


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum x² + eps), as fla (and transformers, to match fla) computes it."""
    return x * torch.rsqrt((x * x).sum(dim=dim, keepdim=True) + eps)


def chunk_gated_delta_rule(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int = CHUNK_SIZE,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One sequence per row, zero initial state. query, key: [B, T, Hk, Dk]; value: [B, T, Hv, Dv];
    g, beta: [B, T, Hv] -> [B, T, Hv, Dv] in query's dtype.

    Everything inside runs in `compute_dtype`: fp32 as the reference; float64 only lets tests check
    the chunked math against a token-by-token recurrence far below fp32 rounding.
    """
    output_dtype = query.dtype
    batch, seq_len, num_k_heads, _ = key.shape
    num_v_heads, v_head_dim = value.shape[-2:]

    # Each query/key head serves num_v_heads // num_k_heads consecutive value heads.
    if num_k_heads != num_v_heads:
        query = query.repeat_interleave(num_v_heads // num_k_heads, dim=2)
        key = key.repeat_interleave(num_v_heads // num_k_heads, dim=2)

    # -> [B, H, T, ...] in compute_dtype
    query, key, value, beta, decay = [
        x.transpose(1, 2).to(compute_dtype, memory_format=torch.contiguous_format)
        for x in (query, key, value, beta, g)
    ]
    query = l2norm(query, dim=-1, eps=1e-6)
    key = l2norm(key, dim=-1, eps=1e-6)
    query = query * query.shape[-1] ** -0.5

    # Zero-pad the sequence to whole chunks: a padded token has k = v = β = 0 and no decay, and no
    # real token reads a later one, so the padding changes nothing.
    pad = (chunk_size - seq_len % chunk_size) % chunk_size
    query, key, value = (F.pad(x, (0, 0, 0, pad)) for x in (query, key, value))
    beta, decay = (F.pad(x, (0, pad)) for x in (beta, decay))
    num_chunks = (seq_len + pad) // chunk_size

    v_beta = value * beta.unsqueeze(-1)
    k_beta = key * beta.unsqueeze(-1)
    # -> [B, H, num_chunks, chunk_size, ...]
    query, key, k_beta, v_beta = [
        x.reshape(x.shape[0], x.shape[1], -1, chunk_size, x.shape[-1]) for x in (query, key, k_beta, v_beta)
    ]
    decay = decay.reshape(decay.shape[0], decay.shape[1], -1, chunk_size)

    # Inside a chunk: cum_decay[i] = log of the decay from the chunk start to token i, and
    # pairwise_decay[i, j] = exp(cum_decay[i] - cum_decay[j]) for j <= i, 0 above the diagonal
    # (masked before exp, where it could overflow).
    strictly_upper = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=query.device).triu(1)
    cum_decay = decay.cumsum(dim=3)
    pairwise_decay = cum_decay.unsqueeze(4) - cum_decay.unsqueeze(3)
    pairwise_decay = pairwise_decay.masked_fill(strictly_upper, float("-inf")).exp()

    # UT transform: the chunk's sequential delta-rule writes become one unit lower-triangular solve,
    # giving the values to write (new_values) and the decayed keys that read the old state (k_cumdecay).
    ut_system = (k_beta @ key.transpose(-1, -2)) * pairwise_decay
    intra_chunk_attn = (query @ key.transpose(-1, -2)) * pairwise_decay
    decayed_k_beta = k_beta * cum_decay.exp().unsqueeze(-1)
    new_values = torch.linalg.solve_triangular(ut_system, v_beta, upper=False, unitriangular=True)
    k_cumdecay = torch.linalg.solve_triangular(ut_system, decayed_k_beta, upper=False, unitriangular=True)

    state = torch.zeros(batch, num_v_heads, key.shape[-1], v_head_dim, dtype=new_values.dtype, device=new_values.device)
    out = torch.zeros_like(new_values)

    # Decay queries from the chunk start and keys to the chunk end once, rather than in the scan.
    query = query * cum_decay.exp().unsqueeze(-1)
    key = key * (cum_decay[..., -1:] - cum_decay).exp().unsqueeze(-1)
    chunk_decay = cum_decay[..., -1].exp()[..., None, None]

    # Scan over chunks: read the state carried in, then write this chunk's corrections into it.
    for i in range(num_chunks):
        v_new = new_values[:, :, i] - k_cumdecay[:, :, i] @ state
        out[:, :, i] = query[:, :, i] @ state + intra_chunk_attn[:, :, i] @ v_new
        state = state * chunk_decay[:, :, i] + key[:, :, i].transpose(-1, -2) @ v_new

    out = out.reshape(batch, num_v_heads, -1, v_head_dim)[:, :, :seq_len]
    return out.transpose(1, 2).to(output_dtype, memory_format=torch.contiguous_format)


def kernel() -> str:
    """What this op runs, for OpTable.backends."""
    return "transformers' torch chunked gated delta rule per document"
