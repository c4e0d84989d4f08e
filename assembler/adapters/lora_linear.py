"""`LoraLinear`: an nn.Linear with a low-rank update, y = W x + b + (alpha / r) · B A dropout(x).

Why not peft's own module injection (`peft.inject_adapter_in_model`): peft replaces each linear by a
wrapper holding the original as `base_layer`, so the base weight becomes `q_proj.base_layer.weight`.
Everything here relies on parameter names being the HF checkpoint's (`q_proj.weight`): HF loading
and export, DCP checkpoints, `parallel.fsdp.fp32_params` globs, and FSDP2's unit choice (a nested
fp32 unit shards a block's called `nn.Linear` children apart). This subclass keeps the base
`weight` / `bias` where they were and adds `lora_A` / `lora_B` beneath, which are exactly the tensor
names of PEFT's saved format (`<module>.lora_A.weight`), so the adapter folder is PEFT's without a
renaming table. Its forward is three plain matmuls (no per-call adapter dispatch), which
torch.compile traces in one graph and FSDP2 shards like any linear.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from assembler.hf.checkpoint.model_tensors import checkpoint_name


class LoraLinear(nn.Linear):
    """`base`'s own parameters (the same tensors, not copies) plus `lora_A` [r, in] and `lora_B`
    [out, r] in `adapter_dtype`. Input x [..., in] -> [..., out] in x's dtype."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float, adapter_dtype: torch.dtype):
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a second weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        device = base.weight.device
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=device, dtype=adapter_dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=device, dtype=adapter_dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        # The adapter computes in its own dtype (fp32 adapters on a bf16 base in one CPU process;
        # under FSDP2's mixed precision both arrive in param_dtype and the casts are no-ops).
        update = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))
        return out + (update * self.scaling).to(out.dtype)

    def merged_weight(self, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> torch.Tensor:
        """W + (alpha / r) · B A [out, in] in fp32 (the export casts it to its dtype once); the full
        tensors are given, so the caller decides how they were gathered."""
        return weight.float() + self.scaling * (lora_b.float() @ lora_a.float())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lora rank={self.rank}, alpha={self.alpha}"


def fresh_adapter_weights(module: LoraLinear, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's default LoRA init (`init_lora_weights=True`) as full CPU tensors: A kaiming-uniform
    with a = sqrt(5) (nn.Linear's own init), B zero, so the adapted model starts equal to the base."""
    a = torch.empty(module.lora_A.weight.shape, dtype=torch.float32)
    bound = math.sqrt(6.0 / ((1 + 5.0) * a.shape[1]))  # kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+a^2)), bound gain*sqrt(3/fan_in)
    a.uniform_(-bound, bound, generator=generator)
    return a, torch.zeros(module.lora_B.weight.shape, dtype=torch.float32)


def lora_modules(model: nn.Module) -> dict[str, LoraLinear]:
    """Module name (the HF checkpoint's, wrappers stripped) → LoraLinear, in model order."""
    return {checkpoint_name(name): module for name, module in model.named_modules() if isinstance(module, LoraLinear)}
