"""The GPU end-to-end driver (benchmarks/gpu_e2e.py) run on the CPU with the tiny spec: its kill,
resume, export and transformers-logits plumbing is checked here, so a device call never spends its
minutes finding a bug in the driver (the H200 run of 2026-12-01 lost its logits check to one: the
held-out inputs lacked `mm_token_type_ids`)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_driver_kills_resumes_exports_and_compares_logits_on_the_tiny_spec(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_e2e.py"), "--spec", str(ROOT / "specs" / "qwen3_5_tiny.yaml"),
         "--kill-backend", "hf", "--hf-steps", "20", "--cells", "one/hf/images", "kill",
         "--out", str(out), "--runs", str(tmp_path / "runs"), "--export-dir", str(tmp_path / "export")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reference, kill = json.loads((out / "e2e.json").read_text())

    assert reference["ok"] and reference["steps"] == 20
    # Killed after the step-10 checkpoint and before the end; the resumed run redid steps 11–20.
    assert 10 < kill["killed_at_step"] < 20
    assert kill["resumed_steps"] == list(range(11, 21))
    # The reference is one plain CPU process (unsharded) and the kill cell a torchrun rank (FSDP2
    # over gloo): the same fp32 math summed in another order, so 1e-6 here, far inside the GPU's 1e-3.
    assert kill["resumed_worst_rel"] <= 1e-6 and kill["before_kill_worst_rel"] <= 1e-6
    assert kill["export_rc"] == 0
    # fp32 on the CPU: transformers' fp32 run is the reference itself (floor 0), and ours must agree
    # with it to FP32_RTOL, a summation-order bound (the hf backend is bitwise in the parity tests).
    for name in ("text", "text+image"):
        logits = kill["logits"][name]
        assert logits["floor"] == 0.0 and logits["rel_err"] <= 1e-5 and logits["ok"], kill["logits"]
    assert kill["ok"]
