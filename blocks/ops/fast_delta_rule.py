"""`fast` delta rule: fla's chunked gated delta rule over the flattened tokens, one state per document.

The batch [B, T] is flattened to one row of B*T tokens and `ctx.cu_seqlens` tells fla where every
document starts, so its state restarts at each boundary (no padding, no copies per document).
q/k are l2-normalised inside (fla's use_qk_l2norm_in_kernel=True) and q is scaled by Dk**-0.5.

fla's own entry point is `@torch.compiler.disable`d, so a compiled layer would break its graph
there. Instead its forward and backward run as two `torch.library` custom ops with fake (meta)
implementations, joined by an autograd.Function that Dynamo traces: a decoder layer compiles with
`fullgraph=True`.

Where Qwen's FlashQLA is installed (`pip install 'assemble[flashqla]'`: TileLang kernels, fused
forward and backward) and applies (SM90/SM100, bf16/fp16, key and value head dims 128: Qwen3.5's
linear layers), both ops run its `chunk_gated_delta_rule_fwd/bwd` instead of fla's: the same
chunked algorithm, the same intermediates (chunk-local cumulative decay, the UT matrix A), measured
1.6x fla's Triton forward + backward at 4B head shapes on an H200 (../shared/gpu/README.md). fla
0.6's public entry point dispatches to it too, but is `torch.compiler.disable`d; through these
custom ops a layer still compiles fullgraph. The choice is a function of the tensors' device,
dtype and head dims, so a forward and its backward always take the same kernels; `kernel()` says
which ran.

fla 0.6.0 on Hopper with Triton >= 3.4, < 3.7.1 refuses the backward (`chunk_bwd_dqkwg`): Triton
miscompiles that kernel's BK=64 tiling. With key head dim 128 fla tiles BK=128 on Hopper, which
was measured correct (5e-3 relative error against float64 on Qwen3.5-4B shapes, bf16 rounding;
see ../shared/gpu/README.md), so for key head dim 128 the guard is lifted with a log line. Other
key head dims on such a setup keep fla's forward, but take their backward from the torch chunked
implementation (autograd through `blocks.ops.hf_delta_rule`), also with a log line. A GPU test
checks the gradients against a float64 recurrence either way.
"""

import functools
import importlib.util
import logging

import torch

from blocks.packing import PackingContext

log = logging.getLogger(__name__)

CHUNK_SIZE = 64
# The key head dim whose Hopper tiling (BK=128) was measured correct under the faulty Triton.
HOPPER_SAFE_KEY_HEAD_DIM = 128


def delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *, ctx: PackingContext
) -> torch.Tensor:
    """Chunked gated delta rule; the state starts at zero in every document of `ctx`.

    q, k: [B, T, Hk, Dk]; v: [B, T, Hv, Dv]; g (log decay, <= 0), beta: [B, T, Hv] -> [B, T, Hv, Dv] in q's dtype.
    """
    batch, seq_len = q.shape[:2]

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, batch * seq_len, *x.shape[2:]).contiguous()

    out = _GatedDeltaRule.apply(flat(q), flat(k), flat(v), flat(g), flat(beta), ctx.cu_seqlens)
    return out.reshape(batch, seq_len, *out.shape[2:])


class _GatedDeltaRule(torch.autograd.Function):
    """Saves what fla's own autograd.Function saves (normalised q/k with their rstd, the chunk-local
    cumulative decay and the UT-transform matrix A), so the backward recomputes no more than fla's."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, cu_seqlens):  # noqa: ANN001, ANN205 (autograd.Function)
        out, q_normed, q_rstd, k_normed, k_rstd, g_cumsum, A = torch.ops.assemble.gated_delta_rule_fwd(
            q, k, v, g, beta, cu_seqlens
        )
        ctx.save_for_backward(q_normed, q_rstd, k_normed, k_rstd, v, g, g_cumsum, beta, A, cu_seqlens)
        ctx.dtypes = (q.dtype, k.dtype, v.dtype, g.dtype, beta.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        grads = torch.ops.assemble.gated_delta_rule_bwd(grad_out.contiguous(), *ctx.saved_tensors)
        dq, dk, dv, dg, dbeta = (grad.to(dtype) for grad, dtype in zip(grads, ctx.dtypes))
        return dq, dk, dv, dg, dbeta, None


@torch.library.custom_op("assemble::gated_delta_rule_fwd", mutates_args=())
def gated_delta_rule_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, cu_seqlens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k [1, N, Hk, Dk], v [1, N, Hv, Dv], g/beta [1, N, Hv], cu_seqlens [D + 1] ->
    (out [1, N, Hv, Dv], q_normed, q_rstd [1, N, Hk], k_normed, k_rstd, g_cumsum [1, N, Hv] fp32, A [1, N, Hv, 64])."""
    from fla.modules.norm.l2norm import l2norm_fwd
    from fla.ops.gated_delta_rule.chunk import chunk_gated_delta_rule_fwd
    from fla.ops.utils import prepare_chunk_indices

    with torch.cuda.device(q.device):
        q_normed, q_rstd = l2norm_fwd(q)
        k_normed, k_rstd = l2norm_fwd(k)
        if flash_qla_applies(k_normed, v):
            import flash_qla

            # auto_cp: FlashQLA's intra-card split of long documents; its context is rebuilt from
            # cu_seqlens alone in the backward (no forward cache: a custom op returns tensors only).
            g_cumsum, A, out, _, _, _ = flash_qla.chunk_gated_delta_rule_fwd(
                q=q_normed, k=k_normed, v=v, g=g, beta=beta, scale=q.shape[-1] ** -0.5, initial_state=None,
                cu_seqlens=cu_seqlens, output_final_state=False, auto_cp=True, enable_fwd_cp_cache=False, is_train=True,
            )
        else:
            g_cumsum, out, A, _, _, _ = chunk_gated_delta_rule_fwd(
                q=q_normed, k=k_normed, v=v, g=g, beta=beta, scale=q.shape[-1] ** -0.5,
                initial_state=None, output_final_state=False, cu_seqlens=cu_seqlens,
                chunk_indices=prepare_chunk_indices(cu_seqlens, CHUNK_SIZE), chunk_size=CHUNK_SIZE,
            )
    # Fresh, contiguous tensors: the fake implementation promises exactly that layout to the compiler.
    outputs = (out.to(q.dtype), q_normed, q_rstd, k_normed, k_rstd, g_cumsum, A)
    return tuple(x.contiguous() for x in outputs)


@gated_delta_rule_fwd.register_fake
def _gated_delta_rule_fwd_fake(q, k, v, g, beta, cu_seqlens):  # noqa: ANN001, ANN202
    batch, tokens, k_heads, _ = q.shape
    v_heads = v.shape[2]
    return (
        v.new_empty(v.shape, dtype=q.dtype),
        torch.empty_like(q, memory_format=torch.contiguous_format),
        q.new_empty((batch, tokens, k_heads), dtype=torch.float32),
        torch.empty_like(k, memory_format=torch.contiguous_format),
        k.new_empty((batch, tokens, k_heads), dtype=torch.float32),
        g.new_empty(g.shape, dtype=torch.float32),
        k.new_empty((batch, tokens, v_heads, CHUNK_SIZE)),
    )


@torch.library.custom_op("assemble::gated_delta_rule_bwd", mutates_args=())
def gated_delta_rule_bwd(
    grad_out: torch.Tensor,
    q_normed: torch.Tensor,
    q_rstd: torch.Tensor,
    k_normed: torch.Tensor,
    k_rstd: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    g_cumsum: torch.Tensor,
    beta: torch.Tensor,
    A: torch.Tensor,
    cu_seqlens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dq, dk, dv, dg, dbeta), gradients w.r.t. the raw (un-normalised) q and k."""
    if flash_qla_applies(k_normed, v):
        return _flash_qla_backward(grad_out, q_normed, q_rstd, k_normed, k_rstd, v, g_cumsum, beta, A, cu_seqlens)
    if not fla_backward_is_safe(k_normed.shape[-1]):
        return _torch_backward(grad_out, q_normed, q_rstd, k_normed, k_rstd, v, g, beta, cu_seqlens)

    from fla.modules.norm.l2norm import l2norm_bwd
    from fla.ops.gated_delta_rule.chunk import chunk_gated_delta_rule_bwd
    from fla.ops.utils import prepare_chunk_indices

    with torch.cuda.device(grad_out.device):
        dq, dk, dv, dbeta, dg, _, _, _ = chunk_gated_delta_rule_bwd(
            q=q_normed, k=k_normed, v=v, g=g_cumsum, beta=beta, A=A, scale=q_normed.shape[-1] ** -0.5,
            initial_state=None, do=grad_out, dht=None, cu_seqlens=cu_seqlens,
            chunk_indices=prepare_chunk_indices(cu_seqlens, CHUNK_SIZE), chunk_size=CHUNK_SIZE,
        )
        dq = l2norm_bwd(q_normed, q_rstd, dq)
        dk = l2norm_bwd(k_normed, k_rstd, dk)
    return tuple(x.contiguous() for x in (dq, dk, dv, dg, dbeta))


@gated_delta_rule_bwd.register_fake
def _gated_delta_rule_bwd_fake(grad_out, q_normed, q_rstd, k_normed, k_rstd, v, g, g_cumsum, beta, A, cu_seqlens):  # noqa: ANN001, ANN202
    return (
        torch.empty_like(q_normed), torch.empty_like(k_normed), torch.empty_like(v),
        g.new_empty(g.shape, dtype=torch.float32), torch.empty_like(beta),
    )


def _flash_qla_backward(grad_out, q_normed, q_rstd, k_normed, k_rstd, v, g_cumsum, beta, A, cu_seqlens):  # noqa: ANN001, ANN202
    """FlashQLA's backward of the forward above (same intermediates), then the l2norm's."""
    import flash_qla
    from fla.modules.norm.l2norm import l2norm_bwd

    with torch.cuda.device(grad_out.device):
        dq, dk, dv, dbeta, dg, _ = flash_qla.chunk_gated_delta_rule_bwd(
            q=q_normed, k=k_normed, v=v, g=g_cumsum, beta=beta, A=A, do=grad_out, dht=None,
            scale=q_normed.shape[-1] ** -0.5, initial_state=None, cu_seqlens=cu_seqlens, auto_cp=True,
        )
        dq = l2norm_bwd(q_normed, q_rstd, dq)
        dk = l2norm_bwd(k_normed, k_rstd, dk)
    return tuple(x.contiguous() for x in (dq, dk, dv, dg, dbeta))


# FlashQLA's kernels: SM90 (Hopper) and SM100/SM103 (Blackwell) run forward and backward; head dims 128 only.
FLASH_QLA_ARCHS = (9, 10)
FLASH_QLA_HEAD_DIM = 128


@functools.cache
def flash_qla_installed() -> bool:
    return importlib.util.find_spec("flash_qla") is not None


@functools.cache
def _flash_qla_arch(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] in FLASH_QLA_ARCHS


def flash_qla_applies(k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether FlashQLA runs this call: installed, a CUDA device of its architectures, bf16/fp16
    inputs, key and value head dims 128 (k [.., Hk, Dk], v [.., Hv, Dv])."""
    return (
        k.is_cuda and k.dtype in (torch.bfloat16, torch.float16) and k.dtype == v.dtype
        and k.shape[-1] == FLASH_QLA_HEAD_DIM and v.shape[-1] == FLASH_QLA_HEAD_DIM
        and flash_qla_installed() and _flash_qla_arch(k.device.index if k.device.index is not None else torch.cuda.current_device())
    )


_GUARD: dict[str, bool] = {}  # "active": whether fla's Hopper guard applies here (read before we lift it)
_LOGGED: set[int] = set()


def fla_backward_is_safe(key_head_dim: int) -> bool:
    """Whether fla's delta-rule backward gives correct gradients for this key head dim on this GPU.

    Lifts fla's Hopper guard (once, logged) where that was measured safe: key head dim 128.
    """
    import fla.ops.common.chunk_o as chunk_o

    if not hopper_guard_applies():
        return True
    import triton

    if key_head_dim == HOPPER_SAFE_KEY_HEAD_DIM:
        if not chunk_o.TRITON_ABOVE_3_7_1:
            chunk_o.TRITON_ABOVE_3_7_1 = True
            log.warning(
                "fast delta_rule: lifting fla's Hopper guard for Triton %s: with key head dim %d fla tiles its "
                "backward BK=128, measured correct against float64 (the miscompiled tiling is BK=64)",
                triton.__version__, key_head_dim,
            )
        return True
    if key_head_dim not in _LOGGED:
        _LOGGED.add(key_head_dim)
        log.warning(
            "fast delta_rule: fla's backward is miscompiled on Hopper with Triton %s for key head dim %d; "
            "using the torch chunked backward instead (slow; Triton >= 3.7.1, i.e. torch >= 2.12, fixes this)",
            triton.__version__, key_head_dim,
        )
    return False


def _torch_backward(grad_out, q_normed, q_rstd, k_normed, k_rstd, v, g, beta, cu_seqlens):  # noqa: ANN001, ANN202
    """The delta rule's gradients by differentiating the torch chunked implementation (fp32 inside).

    q and k are rebuilt from their normalised form and rstd (x = x̂ / rstd), so the gradient is the
    one w.r.t. the raw inputs, normalisation included.
    """
    from blocks.ops.hf_delta_rule import delta_rule as torch_delta_rule

    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    ctx = PackingContext.from_document_lengths([lengths]).to(grad_out.device)
    inputs = (
        q_normed.float() / q_rstd.unsqueeze(-1),
        k_normed.float() / k_rstd.unsqueeze(-1),
        v.float(),
        g.float(),
        beta.float(),
    )
    # torch.func.vjp, not torch.autograd: a custom op's body runs below the autograd dispatch key.
    _, vjp = torch.func.vjp(lambda *args: torch_delta_rule(*args, ctx=ctx), *inputs)
    dq, dk, dv, dg, dbeta = vjp(grad_out.float())
    grads = (dq.to(q_normed.dtype), dk.to(k_normed.dtype), dv.to(v.dtype), dg, dbeta.to(beta.dtype))
    return tuple(x.contiguous() for x in grads)


def hopper_guard_applies() -> bool:
    """Whether fla's Hopper guard (Triton >= 3.4, < 3.7.1) applies on this machine; read once,
    before `fla_backward_is_safe` lifts it."""
    if "active" not in _GUARD:
        import fla.ops.common.chunk_o as chunk_o
        from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0

        _GUARD["active"] = bool(IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not chunk_o.TRITON_ABOVE_3_7_1)
    return _GUARD["active"]


def kernel() -> str:
    """What this op runs on this machine, for OpTable.backends: fla's chunked kernels, and where
    fla's Hopper guard applies, which backward each key head dim gets (see the module docstring)."""
    if importlib.util.find_spec("fla") is None:
        return "fla chunk_gated_delta_rule (fla not installed: cannot run here)"
    note = "fla chunk_gated_delta_rule forward and backward (Triton)"
    if flash_qla_installed():
        note = ("FlashQLA chunk_gated_delta_rule forward and backward (TileLang) for bf16/fp16 and head dims "
                f"{FLASH_QLA_HEAD_DIM} on SM90/SM100, fla's (Triton) for any other call")
    else:
        note += "; FlashQLA, 1.6x faster on Hopper at Qwen3.5's head dims, is not installed (pip install 'assemble[flashqla]')"
    if hopper_guard_applies():
        note += (f"; Hopper with Triton < 3.7.1: fla's backward for key head dim {HOPPER_SAFE_KEY_HEAD_DIM} "
                 "(guard lifted), the torch chunked backward for any other")
    return note
