"""Op implementations per backend, and the op table a spec resolves to.

This package is the only place that imports GPU kernel packages (fla, flash-attn, triton), and it
imports them lazily, when a `fast` op is first resolved, so CPU installs never need them.

Every op of one name has the same signature on every backend (shapes below); blocks call
`ops.<name>(...)` and never know which backend they run on.

  attention(q [B,T,Hq,D], k [B,T,Hkv,D], v [B,T,Hkv,D], *, scale: float, causal: bool,
            ctx: PackingContext) -> [B,T,Hq,D]
      softmax attention restricted to each document of `ctx` (causal inside it when `causal`).
  delta_rule(q [B,T,Hk,Dk], k [B,T,Hk,Dk], v [B,T,Hv,Dv], g [B,T,Hv], beta [B,T,Hv], *,
             ctx: PackingContext) -> [B,T,Hv,Dv]
      chunked gated delta rule with l2-normalised q/k and q scaled by Dk**-0.5 (in the op, as
      fla's use_qk_l2norm_in_kernel=True); the state restarts at every document.
  conv1d(x [B,T,C], weight [C,K], *, ctx: PackingContext) -> [B,T,C]
      depthwise causal conv followed by silu; the window restarts at every document.
  rms_norm(x [..., N], weight [N], *, eps: float, zero_centered: bool) -> [..., N]
      x̂·w (default) or x̂·(1+w) (zero_centered), computed in fp32 and cast back.
  gated_rms_norm(x [..., N], gate [..., N], weight [N], *, eps: float) -> [..., N]
      x̂·w·silu(gate).
  cross_entropy(hidden [N,H], weight [V,H], labels [N], *, ignore_index: int,
                num_items: int | Tensor | None) -> scalar loss
      logits = hidden @ weightᵀ, cross-entropy in fp32; mean over non-ignored labels, or
      sum / num_items when num_items is given (global-token normalisation).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, fields
from typing import Callable, NamedTuple

OP_NAMES = ("attention", "delta_rule", "conv1d", "rms_norm", "gated_rms_norm", "cross_entropy")
BACKENDS = ("hf", "fast")  # what an op resolves to
AUTO = "auto"  # `ops.backend: auto`: each op `fast` where this machine meets its needs, else `hf`
LOW_PRECISION = ("bfloat16", "float16")  # compute dtypes FlashAttention accepts

# name -> backend -> "module:function" inside blocks.ops. A path, not an imported function, so
# that resolving `hf` never imports a GPU package.
_IMPLEMENTATIONS: dict[str, dict[str, str]] = {
    "attention": {"hf": "blocks.ops.hf_attention:attention", "fast": "blocks.ops.fast_attention:attention"},
    "delta_rule": {"hf": "blocks.ops.hf_delta_rule:delta_rule", "fast": "blocks.ops.fast_delta_rule:delta_rule"},
    "conv1d": {"hf": "blocks.ops.hf_conv1d:conv1d", "fast": "blocks.ops.fast_conv1d:conv1d"},
    "rms_norm": {"hf": "blocks.ops.hf_norms:rms_norm", "fast": "blocks.ops.fast_norms:rms_norm"},
    "gated_rms_norm": {"hf": "blocks.ops.hf_norms:gated_rms_norm", "fast": "blocks.ops.fast_norms:gated_rms_norm"},
    "cross_entropy": {
        "hf": "blocks.ops.hf_cross_entropy:cross_entropy",
        "fast": "blocks.ops.fast_cross_entropy:cross_entropy",
    },
}


class OpChoice(NamedTuple):
    """One op of an OpTable: its backend, and the kernel(s) that backend runs on this machine, as
    its module's `kernel()` says (including the choices it makes per call: compiled or eager, one
    document per row or packed, fla's Hopper guard), so a log names what actually ran."""

    op: str
    backend: str
    kernel: str


@dataclass(frozen=True)
class OpTable:
    """The resolved ops of one model: one callable per op name (signatures in the module docstring)."""

    attention: Callable
    delta_rule: Callable
    conv1d: Callable
    rms_norm: Callable
    gated_rms_norm: Callable
    cross_entropy: Callable
    backends: tuple[OpChoice, ...] = ()  # for logs and summaries (`describe`)

    def describe(self) -> str:
        """One line per op: `name: backend (kernel)`."""
        return "\n".join(f"{choice.op}: {choice.backend} ({choice.kernel})" for choice in self.backends)


def resolve_ops(
    backend: str = "hf",
    overrides: dict[str, str] | None = None,
    *,
    device_type: str | None = None,
    compute_dtype: str = "bfloat16",
) -> OpTable:
    """Resolve every op to its implementation: `backend` for all, then per-op `overrides`.

    `auto` is decided for `device_type` (default: cuda when this machine has it, else cpu) and the
    dtype the model computes in; see `chosen_backends`.

    >>> resolve_ops("hf", {"attention": "fast"}).attention  # doctest: +SKIP
    """
    chosen = chosen_backends(backend, overrides, device_type=device_type, compute_dtype=compute_dtype)
    resolved = {name: _load(_IMPLEMENTATIONS[name][which]) for name, which in chosen.items()}
    choices = tuple(OpChoice(name, which, _kernel(_IMPLEMENTATIONS[name][which])) for name, which in chosen.items())
    return OpTable(**resolved, backends=choices)


def chosen_backends(
    backend: str = "hf",
    overrides: dict[str, str] | None = None,
    *,
    device_type: str | None = None,
    compute_dtype: str = "bfloat16",
) -> dict[str, str]:
    """op name -> `hf` | `fast`: `backend` for all, then per-op `overrides`; imports nothing.

    `backend: auto` gives each op not overridden `fast` where `fast_is_usable` says this machine
    (`device_type`, default cuda when available) and `compute_dtype` meet its needs, else `hf`.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(OP_NAMES))
    if unknown:
        raise ValueError(f"unknown op(s) {unknown} in ops overrides; known ops: {', '.join(OP_NAMES)}")
    if backend == AUTO:
        device_type = device_type or _this_machine()
        chosen = {
            name: overrides.get(name, "fast" if fast_is_usable(name, device_type, compute_dtype) else "hf")
            for name in OP_NAMES
        }
    else:
        chosen = {name: overrides.get(name, backend) for name in OP_NAMES}
    for name, which in chosen.items():
        if which not in BACKENDS:
            raise ValueError(f"op {name!r}: unknown backend {which!r}; known backends: {', '.join((*BACKENDS, AUTO))}")
    return chosen


def fast_is_usable(name: str, device_type: str, compute_dtype: str) -> bool:
    """Whether op `name`'s `fast` implementation can train here: every fast op wants CUDA (off it
    the fast norms and cross-entropy are torch math, and `hf` keeps a CPU run bitwise
    transformers'); the delta rule and conv1d also want fla; attention a bf16/fp16 compute dtype."""
    if device_type != "cuda":
        return False
    if name in _FAST_NEEDS_FLA and importlib.util.find_spec("fla") is None:
        return False
    return not (name == "attention" and compute_dtype not in LOW_PRECISION)


def _this_machine() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# What the `fast` ops need beyond PyTorch to run a training step: a CUDA device (FlashAttention
# varlen / cuDNN for packed attention, fla's Triton kernels) and fla. The fast norms and
# cross-entropy fall back to torch math off CUDA, so they run anywhere.
_FAST_NEEDS_CUDA = ("attention", "delta_rule", "conv1d")
_FAST_NEEDS_FLA = ("delta_rule", "conv1d")


def unmet_fast_requirements(chosen: dict[str, str], device_type: str, compute_dtype: str = "bfloat16") -> list[str]:
    """Why the `fast` ops in `chosen` (from `chosen_backends`) cannot train on `device_type` in
    `compute_dtype`: one sentence per missing requirement, each saying what to do; empty when they can."""
    fast = [name for name, which in chosen.items() if which == "fast"]
    problems = []
    on_cuda_only = [name for name in fast if name in _FAST_NEEDS_CUDA]
    if on_cuda_only and device_type != "cuda":
        problems.append(
            f"ops {', '.join(on_cuda_only)} use the `fast` backend, which needs a CUDA GPU, and this process runs "
            f"on {device_type}: use `-o ops.backend=hf` here (the hf ops compute the same model)"
        )
    need_fla = [name for name in fast if name in _FAST_NEEDS_FLA]
    if need_fla and not problems and importlib.util.find_spec("fla") is None:  # off CUDA, fla would not help
        problems.append(
            f"ops {', '.join(need_fla)} use the `fast` backend, which needs flash-linear-attention (fla), not "
            "installed here: `pip install 'assemble[gpu]'`, or `-o ops.backend=hf`"
        )
    if chosen["attention"] == "fast" and compute_dtype not in LOW_PRECISION:
        # FlashAttention has no fp32 kernel, and autocast does not cast a custom op's inputs.
        problems.append(
            f"op attention uses the `fast` backend (FlashAttention), which computes in bf16/fp16 only, and this run "
            f"computes in {compute_dtype}: set `parallel.fsdp.param_dtype: bfloat16`, or `-o ops.overrides.attention=hf`"
        )
    return problems


def _load(path: str) -> Callable:
    module_name, function_name = path.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def _kernel(path: str) -> str:
    """The `kernel()` note of the module implementing `path`: every op module has one."""
    return importlib.import_module(path.split(":")[0]).kernel()


assert {f.name for f in fields(OpTable)} - {"backends"} == set(OP_NAMES)
