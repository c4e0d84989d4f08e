"""transformers loads an `assemble export` folder and its logits agree with ours (GPU, bf16; the
CPU dry run of benchmarks/gpu_e2e.py runs it too, in fp32 on the `hf` backend).

    python benchmarks/e2e_logits.py EXPORT_DIR SPEC

Held-out inputs (never trained on): random text, and random text around one 448x448 random image
(pixel patches as transformers' processor lays them out). Ours: the spec's model (its `auto` ops:
the fast kernels on this GPU) loaded from the same folder, bf16. Prints one JSON line: per input
the relative error ‖ours − theirs‖ / ‖theirs‖ of the logits and the share of positions whose
argmax agrees. Bound: relative error ≤ LOGITS_RTOL. Both run bf16 through 32 layers with other
kernels (FlashAttention and fla against sdpa/eager and transformers' own fla path), so they agree
to bf16 rounding accumulated over depth, not bitwise; the bitwise check is the CPU `hf` backend's
(tests/test_parity_vlm.py). Exit 1 when an input is over the bound.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assembler import build_model, load_hf_checkpoint, load_spec  # noqa: E402
from assembler.bench.workload import ImageSpec, synthetic_row  # noqa: E402

LOGITS_RTOL = 5e-2


def main() -> None:
    export_dir, spec_path = Path(sys.argv[1]), sys.argv[2]
    from transformers import AutoModelForImageTextToText

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    theirs = AutoModelForImageTextToText.from_pretrained(export_dir, dtype=dtype).to(device).eval()
    spec = load_spec(spec_path)
    ours = build_model(spec, device=device, dtype=dtype, seed=0)  # buffers made, weights then loaded
    load_hf_checkpoint(ours, export_dir, spec, device=device)
    ours.eval()
    image_token = spec.model["tokens"]["image"]

    results = {}
    for name, images in (("text", None), ("text+image", ImageSpec(1, 448, 448))):
        row, _ = synthetic_row(spec.model, 1024, layout="one-document", images=images, seed=123)
        kwargs = {"input_ids": row["input_ids"].to(device)}
        if images:
            kwargs.update(pixel_values=row["pixel_values"].to(device, dtype), image_grid_thw=row["image_grid_thw"].to(device))
        # transformers computes mRoPE positions from the processor's token types (1 = image).
        mm_token_type_ids = (kwargs["input_ids"] == image_token).int()
        with torch.no_grad():
            reference = theirs(**kwargs, mm_token_type_ids=mm_token_type_ids).logits.float()
            got = ours(**kwargs, packing=row["packing"].to(device), return_logits=True).logits.float()
        rel = float((got - reference).norm() / reference.norm())
        agree = float((got.argmax(-1) == reference.argmax(-1)).float().mean())
        results[name] = {"rel_err": rel, "argmax_agree": agree, "ok": rel <= LOGITS_RTOL}
    print(json.dumps({"bound": LOGITS_RTOL, **results}))
    sys.exit(0 if all(r["ok"] for r in results.values()) else 1)


if __name__ == "__main__":
    main()
