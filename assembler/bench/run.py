"""Benchmark our model from a spec: random init, bf16 parameters, fused AdamW, the spec's parallel
policy (checkpointing, compile; no sharding in one process), one sequence per step."""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import torch

from assembler.bench.measure import Measurement, measure_training_step
from assembler.bench.memory_peak import mark
from assembler.bench.workload import ImageSpec, text_batch, text_matmul_parameters, training_flops, vlm_batch
from assembler.build import build_model
from assembler.parallelize import parallelize
from assembler.spec import Spec
from assembler.train.metrics import matmul_parameter_count

log = logging.getLogger(__name__)

# Dynamo keeps one compiled graph per layer type and shape regime; the default limit (8) would
# silently fall back to eager once a few sequence lengths and both layer types have been seen.
RECOMPILE_LIMIT = 64


def bench_spec(
    spec: Spec,
    seq_lens: list[int],
    *,
    steps: int = 5,
    warmup: int = 2,
    images: ImageSpec | None = None,
    profile: bool = True,
    memory_peak: bool = False,
    label: str | None = None,
    memory_cap_gib: float | None = None,
    on_result: "Callable[[list[Measurement]], None] | None" = None,
) -> list[Measurement]:
    """Train-step measurements of the spec's model at each sequence length, on the current GPU.

    `on_result` gets the rows so far after each one (so a run cut short still leaves its rows).
    Text-only runs (no `images`) build the model without its vision tower, so the measured model is
    the text tower + LM head, the same model as transformers' Qwen3_5ForCausalLM baseline.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("assemble bench needs a CUDA GPU")
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, RECOMPILE_LIMIT)
    if memory_cap_gib is not None:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_cap_gib * 2**30 / total))
    device = torch.device("cuda")
    build_spec = spec if images else dataclasses.replace(spec, model={**spec.model, "vision": None})
    model = build_model(build_spec, device=device, dtype=torch.bfloat16, seed=0)
    parallelize(model, spec)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=True)
    n_text = text_matmul_parameters(model)
    text_spec = spec.model["text"]
    label = label or f"{spec.name} ({spec.ops['backend']}, AC {spec.parallel['activation_checkpointing'].get('mode', 'none')})"

    results = []
    for seq_len in seq_lens:
        if images:
            batch, patches = vlm_batch(spec.model, seq_len, images, device)
            vision_spec = spec.model["vision"]
            per_image = patches // images.count
            flops = training_flops(
                n_text, text_spec, seq_len,
                vision=(matmul_parameter_count(model.model.visual), vision_spec, patches, per_image),
            )
            row_label = f"{label} + {images.count}x{images.height}x{images.width}"
        else:
            batch, flops, row_label = text_batch(seq_len, device), training_flops(n_text, text_spec, seq_len), label

        def step(batch: dict = batch) -> None:
            loss = model(**batch).loss
            mark("backward")
            loss.backward()
            mark("optimizer")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        log.info("%s @ %d tokens: %d warm-up steps (compile and autotuning take minutes on a fresh machine), "
                 "%d timed%s%s", row_label, seq_len, warmup, steps, ", 1 profiled" if profile else "",
                 ", 1 recording the memory peak" if memory_peak else "")
        result = measure_training_step(
            step, label=row_label, tokens_per_step=seq_len, flops_per_step=flops, steps=steps, warmup=warmup,
            profile=profile, memory_peak=memory_peak, cleanup=lambda: optimizer.zero_grad(set_to_none=True),
        )
        log.info("%s @ %d: %s", row_label, seq_len, result.error or f"{result.tokens_per_s:,.0f} tokens/s")
        results.append(result)
        if on_result is not None:
            on_result(results)
    return results
