"""`fast` conv1d: fla's Triton causal depthwise conv (+ silu) over the flattened tokens, window cut at documents.

fla's varlen kernel reads `cu_seqlens` and never lets a window reach into the previous document
(the same rule as the `hf` op's zero padding per document). Forward and backward are
`torch.library` custom ops with fake implementations, so a compiled layer keeps one graph.
"""

import torch

from blocks.packing import PackingContext

ACTIVATION = "silu"


def conv1d(x: torch.Tensor, weight: torch.Tensor, *, ctx: PackingContext) -> torch.Tensor:
    """Depthwise causal conv followed by silu; the window restarts at every document.

    x: [B, T, C], weight: [C, K] -> [B, T, C] in x's dtype.
    """
    batch, seq_len, channels = x.shape
    out = _CausalConv1d.apply(x.reshape(1, batch * seq_len, channels), weight.contiguous(), ctx.cu_seqlens)
    return out.reshape(batch, seq_len, channels)


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, cu_seqlens):  # noqa: ANN001, ANN205 (autograd.Function)
        ctx.save_for_backward(x, weight, cu_seqlens)
        return torch.ops.assemble.causal_conv1d_fwd(x, weight, cu_seqlens)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        x, weight, cu_seqlens = ctx.saved_tensors
        dx, dweight = torch.ops.assemble.causal_conv1d_bwd(x, weight, grad_out.contiguous(), cu_seqlens)
        return dx, dweight, None


@torch.library.custom_op("assemble::causal_conv1d_fwd", mutates_args=())
def causal_conv1d_fwd(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """x [1, N, C], weight [C, K], cu_seqlens [D + 1] -> silu(causal depthwise conv) [1, N, C] in x's dtype."""
    from fla.modules.causal_conv1d import causal_conv1d_fwd as fla_fwd

    with torch.cuda.device(x.device):
        out, _ = fla_fwd(
            x=x, weight=weight, bias=None, residual=None, initial_state=None, output_final_state=False,
            activation=ACTIVATION, cu_seqlens=cu_seqlens,
        )
    return out.contiguous()


@causal_conv1d_fwd.register_fake
def _causal_conv1d_fwd_fake(x, weight, cu_seqlens):  # noqa: ANN001, ANN202
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("assemble::causal_conv1d_bwd", mutates_args=())
def causal_conv1d_bwd(
    x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, cu_seqlens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (dx [1, N, C], dweight [C, K] in weight's dtype)."""
    from fla.modules.causal_conv1d import causal_conv1d_bwd as fla_bwd

    with torch.cuda.device(x.device):
        dx, dweight, _, _, _ = fla_bwd(
            x=x, dy=grad_out, dht=None, weight=weight, bias=None, residual=None, initial_state=None,
            activation=ACTIVATION, cu_seqlens=cu_seqlens,
        )
    return dx.contiguous(), dweight.contiguous()


@causal_conv1d_bwd.register_fake
def _causal_conv1d_bwd_fake(x, weight, grad_out, cu_seqlens):  # noqa: ANN001, ANN202
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight)


def kernel() -> str:
    """What this op runs, for OpTable.backends."""
    return "fla causal_conv1d varlen (Triton), forward and backward"
