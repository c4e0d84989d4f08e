"""What a run reports: loss, lr, grad norm, tokens/s, MFU, peak memory — on the terminal (a
progress bar on a TTY, plain lines otherwise), as JSONL in the run folder, and to TensorBoard
when it is installed.

MFU follows torchtitan's convention (ARCHITECTURE.md, Measuring):
flops/token = 6·N + 12·L_full·H·d_head·S, N = parameters used in matmuls (a tied LM head once).
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from assembler.durable_files import replace_durably

METRICS_FILE = "metrics.jsonl"

# Dense bf16 peak per GPU. Unknown devices (and CPUs) report no MFU rather than a made-up one.
PEAK_FLOPS_BY_DEVICE_NAME = {"H100": 989e12, "H200": 989e12}


def matmul_parameter_count(model: nn.Module) -> int:
    """N of the MFU formula: weights of Linear and Conv layers, plus the LM head.

    Embedding tables are lookups, not matmuls; a tied embedding is counted once, as the head.
    Norm gains, biases and DeltaNet's per-head scalars do no matmul work.
    """
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def flops_per_token(model: nn.Module, text_spec: dict, seq_len: int) -> float:
    """Training flops per token: 6·N + 12·L_full·H·d_head·S (forward + backward)."""
    n_full = sum(1 for layer_type in text_spec["layers"] if layer_type == "full")
    full = text_spec["mixers"].get("full") or {}
    attention = 12 * n_full * full.get("num_heads", 0) * full.get("head_dim", 0) * seq_len
    return 6 * matmul_parameter_count(model) + attention


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS_BY_DEVICE_NAME.items() if key in name), None)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory on CUDA; the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20


class ThroughputMeter:
    """Tokens/s and MFU over the interval since the last logging step (per device)."""

    def __init__(self, flops_per_token: float, peak_flops: float | None):
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self._tokens = 0
        self._start = time.perf_counter()

    def add_tokens(self, n: int) -> None:
        self._tokens += n

    def read_and_reset(self) -> tuple[float, float | None]:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        tokens_per_s = self._tokens / elapsed
        mfu = tokens_per_s * self.flops_per_token / self.peak_flops if self.peak_flops else None
        self._tokens, self._start = 0, time.perf_counter()
        return tokens_per_s, mfu


def _format_record(record: dict[str, Any]) -> str:
    parts = [f"step {record['step']}/{record['total_steps']}", f"loss {record['loss']:.4f}"]
    if "lr" in record:
        parts.append(f"lr {record['lr']:.2e}")
    if "grad_norm" in record:
        parts.append(f"gnorm {record['grad_norm']:.3f}")
    if "tokens_per_s" in record:
        parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
    if record.get("mfu") is not None:
        parts.append(f"MFU {100 * record['mfu']:.1f}%")
    if "peak_memory_gib" in record:
        parts.append(f"mem {record['peak_memory_gib']:.2f} GiB")
    return "  ".join(parts)


class MetricsLogger:
    """Writes one JSONL record per logging step and shows it; create on every rank, only rank 0 writes."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, stream: TextIO | None = None, progress_bar: bool | None = None):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.progress_bar = self.stream.isatty() if progress_bar is None else progress_bar
        self.path = Path(run_dir) / METRICS_FILE
        self._file = None
        self._tensorboard = None
        self._bar_open = False  # the progress bar's line is on screen, unterminated
        if enabled:
            self._file = open(self.path, "a", encoding="utf-8")
            self._tensorboard = _open_tensorboard(Path(run_dir) / "tensorboard")

    def truncate_after(self, step: int) -> None:
        """Forget records past `step` (a resumed run rewrites what the killed run logged after it).

        A line that is not a whole JSON record (the last one, when a kill tore it mid-write) is
        dropped with a warning instead of stopping the resume."""
        if not self.enabled:
            return
        self._file.close()
        kept = []
        raw = self.path.read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                record_step = int(record["step"])
            except (ValueError, TypeError, KeyError):
                self.message(f"warning: {self.path}:{number} is not a whole record (a run killed while writing it?); dropped")
                continue
            if record_step <= step:
                kept.append(line)
        # Atomic: a kill during the rewrite must not lose the records kept.
        replace_durably(self.path, "".join(line + "\n" for line in kept).encode("utf-8"))
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        """record: at least step, total_steps, loss; floats that are not finite are written as null."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            for key, value in record.items():
                if key not in ("step", "total_steps") and isinstance(value, (int, float)) and value is not None:
                    self._tensorboard.add_scalar(f"train/{key}", value, record["step"])
        self.show(record)

    def show(self, record: dict[str, Any]) -> None:
        line = _format_record(record)
        if self.progress_bar:
            width = 24
            done = int(width * record["step"] / max(record["total_steps"], 1))
            self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {line}\033[K")
            self._bar_open = record["step"] < record["total_steps"]
            if not self._bar_open:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A plain line (run folder, resume, export), kept off the progress bar's line."""
        if self.enabled:
            self.stream.write(("\n" if self._bar_open else "") + text + "\n")
            self._bar_open = False
            self.stream.flush()

    def close(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def _open_tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder))
