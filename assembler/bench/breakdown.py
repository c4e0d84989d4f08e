"""Where a training step's GPU time goes: profiled kernels sorted into ops by name.

Kernel names, not Python call sites, so the same rules read our model and the transformers
baseline alike. Rules are tried in order; the first substring that matches names the op.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from assembler.bench.host_gaps import Span, spans_of_profile

# (op category, substrings of kernel names) — order matters: the first match wins.
KERNEL_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("conv1d (fla)", ("causal_conv1d",)),
    ("delta rule (fla)", ("chunk_", "recompute_w_u", "prepare_wy", "l2norm", "solve_tril", "merge_16x16", "gated_delta")),
    ("norms (fla)", ("layer_norm", "rms_norm")),
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("conv1d (torch)", ("conv", "depthwise", "implicit_gemm")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "wgmma", "sm90_", "sm80_", "splitk")),
    ("optimizer (fused AdamW)", ("adam", "multi_tensor")),
    ("softmax / cross-entropy", ("softmax", "logsumexp", "nll_loss", "cross_entropy")),
    ("compiled elementwise (Inductor)", ("triton_",)),
    ("copies / fills", ("memcpy", "memset", "copy", "fill", "cat_", "catarray")),
    ("eager elementwise / reductions", ("elementwise", "vectorized", "reduce", "index", "scatter", "gather", "where")),
]
OTHER = "other"


def categorize(kernel_name: str) -> str:
    name = kernel_name.lower()
    for category, needles in KERNEL_CATEGORIES:
        if any(needle in name for needle in needles):
            return category
    return OTHER


def profiled_spans(step: Callable[[], None]) -> list[Span]:
    """One call of `step` under the profiler, host ops and GPU activity both (host_gaps.py reads the former)."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return spans_of_profile(prof)


def kernel_breakdown(spans: list[Span], top: int = 12) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """([(op category, ms)], [(kernel, ms)] of the `top` kernels) of one profiled step, largest first."""
    by_category: dict[str, float] = defaultdict(float)
    by_kernel: dict[str, float] = defaultdict(float)
    for span in spans:
        if not span.on_gpu:
            continue
        ms = (span.end - span.start) / 1000.0
        by_category[categorize(span.name)] += ms
        by_kernel[span.name] += ms
    ordered = sorted(by_category.items(), key=lambda item: -item[1])
    kernels = sorted(by_kernel.items(), key=lambda item: -item[1])[:top]
    return ordered, [(name[:120], ms) for name, ms in kernels]
