"""The transformers baseline a user would otherwise run (../shared/gpu/README.md), measured exactly
like `assemble bench` so the two can share one table (same run, same card).

transformers' `Qwen3_5ForCausalLM` with the Qwen3.5-4B text shape (from specs/qwen3_5_4b.yaml),
random init, bf16 parameters, fused AdamW (bf16 states), gradient checkpointing, sdpa attention,
fla kernels when importable (transformers picks them up itself), torch conv1d fallback; one
sequence per step, forward + backward + optimizer step. `--liger` applies Liger-Kernel first
(`apply_liger_kernel_to_qwen3_5`: fused linear cross-entropy, RMSNorm, SwiGLU), the one flag
Axolotl and LLaMA-Factory offer; `--no-checkpointing` turns gradient checkpointing off. The four
combinations are the anchor rows a user would pick.

    python benchmarks/hf_baseline.py --seq 4096 8192 16384 --json baseline.json
    python benchmarks/hf_baseline.py --seq 8192 --liger --no-checkpointing --json liger_noac.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assembler import hf_config_from_spec, load_spec  # noqa: E402
from assembler.bench.measure import measure_training_step  # noqa: E402
from assembler.bench.memory_peak import mark  # noqa: E402
from assembler.bench.report import format_breakdown, format_memory_peak, format_rows, save  # noqa: E402
from assembler.bench.workload import TEXT_TOKEN_RANGE, training_flops  # noqa: E402
from assembler.train.metrics import matmul_weight_flops_per_token  # noqa: E402

SPEC = ROOT / "specs" / "qwen3_5_4b.yaml"


def anchor_label(liger: bool, checkpointing: bool) -> str:
    return "transformers" + (" + Liger" if liger else "") + (", checkpointing" if checkpointing else ", no checkpointing")


def build_baseline(spec, *, liger: bool, checkpointing: bool) -> torch.nn.Module:  # noqa: ANN001
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    if liger:  # patches transformers' Qwen3.5 classes, so it must come before the model is made
        from liger_kernel.transformers import apply_liger_kernel_to_qwen3_5

        apply_liger_kernel_to_qwen3_5()

    text_config = dict(hf_config_from_spec(spec)["text_config"])
    text_config.pop("model_type", None)
    config = Qwen3_5TextConfig(**text_config)
    config._attn_implementation = "sdpa"
    config.use_cache = False
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3_5ForCausalLM(config)
    model.to(torch.bfloat16)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--memory-peak", action="store_true", help="one more step: what is alive at the memory peak, by site")
    parser.add_argument("--json", default=None)
    parser.add_argument("--liger", action="store_true", help="apply Liger-Kernel (fused linear CE, RMSNorm, SwiGLU)")
    parser.add_argument("--no-checkpointing", action="store_true", help="gradient checkpointing off")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    # The baseline runs fla's delta rule too: on Hopper with Triton < 3.7.1 its backward needs the
    # same (measured-safe, key head dim 128) guard lift as our fast op.
    from blocks.ops.fast_delta_rule import fla_backward_is_safe

    spec = load_spec(SPEC)
    fla_backward_is_safe(spec.settings.model.text.layer_types["linear"]["mixer"]["key_head_dim"])
    checkpointing = not args.no_checkpointing
    model = build_baseline(spec, liger=args.liger, checkpointing=checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=True)
    matmul_flops = matmul_weight_flops_per_token(model)  # every weight trained: 6·N

    results = []
    for seq_len in args.seq:
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(0, TEXT_TOKEN_RANGE, (1, seq_len), generator=generator).cuda()

        def step(input_ids: torch.Tensor = input_ids) -> None:
            loss = model(input_ids=input_ids, labels=input_ids).loss
            mark("backward")
            loss.backward()
            mark("optimizer")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        results.append(measure_training_step(
            step, label=anchor_label(args.liger, checkpointing), tokens_per_step=seq_len,
            flops_per_step=training_flops(matmul_flops, spec.settings.model.text, seq_len),
            steps=args.steps, warmup=args.warmup, profile=not args.no_profile,
            memory_peak=args.memory_peak, cleanup=lambda: optimizer.zero_grad(set_to_none=True),
        ))
        print(format_rows(results[-1:]), flush=True)
        if args.json:
            save(results, args.json)
    print(f"device: {torch.cuda.get_device_name()}")
    print(format_rows(results))
    for result in results:
        if result.breakdown:
            print(format_breakdown(result))
        if result.memory_peak:
            print(format_memory_peak(result))


if __name__ == "__main__":
    main()
