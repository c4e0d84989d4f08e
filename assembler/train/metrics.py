"""What a run reports: loss, lr, grad norm, tokens/s, MFU, peak memory — on the terminal (a
progress bar on a TTY, plain lines otherwise), as JSONL in the run folder, and to TensorBoard
when it is installed.

MFU follows torchtitan's convention (ARCHITECTURE.md, Measuring): flops/token = 6·N + Σ over the
text layers of what their blocks count themselves (`flops_per_token(settings, hidden_size,
seq_len)`: softmax
attention's 12·H·d_head·S, nothing for Gated DeltaNet and SwiGLU), N = parameters used in matmuls
(a tied LM head once).
"""

from __future__ import annotations

import json
import math
import resource
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from assembler.common.durations import format_duration  # noqa: F401 (also metrics' public name)
from assembler.common.durable_files import replace_durably
from assembler.spec.sections import TextSettings
from blocks.registry import get_block

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"

# Dense bf16 peak per GPU. Unknown devices (and CPUs) report no MFU rather than a made-up one.
PEAK_FLOPS_BY_DEVICE_NAME = {"H100": 989e12, "H200": 989e12}


MATMUL_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # the layers whose weights do matmul work


def matmul_parameter_count(model: nn.Module) -> int:
    """N of the MFU formula: weights of Linear and Conv layers, plus the LM head.

    Embedding tables are lookups, not matmuls; a tied embedding is counted once, as the head.
    Norm gains, biases and DeltaNet's per-head scalars do no matmul work.
    """
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, MATMUL_MODULES) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def matmul_weight_flops_per_token(model: nn.Module) -> int:
    """The matmul part of the training flops per token: 6 per weight of `matmul_parameter_count`
    (2 forward, 2 for the input's gradient, 2 for the weight's), 4 for a frozen weight, which gets
    no gradient (`train.freeze`, a LoRA run's base: its adapters are Linear layers of their own and
    count 6). Counting a frozen base at 6 would overstate a LoRA run's MFU by half."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, MATMUL_MODULES) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += (6 if module.weight.requires_grad else 4) * module.weight.numel()
    return total


def flops_per_token(model: nn.Module, text_spec: TextSettings | Mapping, seq_len: int) -> float:
    """Training flops per token: the matmuls' (`matmul_weight_flops_per_token`: 6·N with every
    weight trained) + the text layers' own (forward + backward). A model with a multi-token-prediction
    head (`model.mtp`) adds its layers' own and a second pass through the LM head (6·V·H: N counts
    the head's weight once, but the head runs on the tower's and the MTP's states)."""
    total = matmul_weight_flops_per_token(model) + attention_flops_per_token(text_spec, seq_len)
    mtp = getattr(model, "mtp", None)
    if mtp is not None:
        total += sum(_layer_type_flops_per_token(text_spec, layer.layer_type, seq_len) for layer in mtp.layers)
        total += 6 * model.lm_head.weight.numel()
    return float(total)


def attention_flops_per_token(text_spec: TextSettings | Mapping, seq_len: int) -> float:
    """The training flops per token that 6·N does not count, summed over the text layers: each
    block of a layer (mixer, mlp) counts its own by its class's `flops_per_token(settings,
    hidden_size, seq_len)` (softmax attention: the score and value matmuls, 12·H·d_head·S;
    linear-attention kernels are not counted, conservatively). A block class without that method
    adds nothing (warned once)."""
    layers, layer_types, _ = _tower_shape(text_spec)
    per_layer_type = {name: _layer_type_flops_per_token(text_spec, name, seq_len) for name in layer_types}
    return float(sum(per_layer_type[name] for name in layers))


def _layer_type_flops_per_token(text_spec: TextSettings | Mapping, layer_type: str, seq_len: int) -> float:
    """What one layer of `layer_type` (its mixer and MLP blocks) counts beyond 6·N."""
    _, layer_types, hidden_size = _tower_shape(text_spec)
    return sum(_block_flops_per_token(kind, section, hidden_size, seq_len) for kind, section in layer_types[layer_type].items())


def _tower_shape(text: TextSettings | Mapping) -> tuple[Sequence[str], Mapping[str, Mapping], int]:
    """(layers, layer_types, hidden_size) of the text tower: a loaded spec's `spec.settings.model.text`,
    or a mapping with those keys (a test's hand-written partial section)."""
    if isinstance(text, TextSettings):
        return text.layers, text.layer_types, text.hidden_size
    return text["layers"], text["layer_types"], text["hidden_size"]


_WARNED_WITHOUT_FLOPS: set[type] = set()  # block classes already warned about


def _block_flops_per_token(kind: str, section: dict, hidden_size: int, seq_len: int) -> float:
    """What the registered block `section` names (a layer type's `kind` entry) counts beyond 6·N."""
    cls = get_block(kind, section["block"])
    count = getattr(cls, "flops_per_token", None)
    if count is None:
        if cls not in _WARNED_WITHOUT_FLOPS:
            _WARNED_WITHOUT_FLOPS.add(cls)
            warnings.warn(f"{kind} block {section['block']!r} ({cls.__module__}.{cls.__qualname__}) has no "
                          "flops_per_token: MFU counts only its parameters' 6·N; give it a staticmethod "
                          "flops_per_token(settings, hidden_size, seq_len) -> float for the rest")
        return 0.0
    return float(count(section, hidden_size, seq_len))


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


# Steps before the steady state: the first compiles every block and autotunes the kernels, the
# next ones recompile for shapes seen anew (another image count, dynamic sizes). `assemble train`'s
# steady-state figures and `assemble bench`'s default warm-up both skip this many steps.
WARMUP_STEPS = 3


@dataclass(frozen=True)
class SteadyState:
    """Throughput over a run's steps after the warm-up: what `assemble bench` measures of a step.

    tokens_per_s counts the training step only (forward, backward, optimizer), as the benchmark
    does; data_share is the data pipeline's time as a fraction of the whole (step + data)."""

    steps: int
    tokens_per_s: float
    mfu: float | None
    step_s: float
    data_share: float

    def describe(self) -> str:
        mfu = f", MFU {100 * self.mfu:.1f}%" if self.mfu is not None else ""
        return (f"{self.steps} steps after {WARMUP_STEPS} warm-up: {self.tokens_per_s:,.0f} tok/s{mfu}, "
                f"{self.step_s:.3f} s/step, data {100 * self.data_share:.1f}% of the time")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StepTimer:
    """Per-step times of a run (per device): interval tokens/s, MFU and ETA for the progress line,
    and the steady state at the end. Step times are exact because every step ends by reading its
    loss on the host (a device sync)."""

    def __init__(self, flops_per_token: float, peak_flops: float | None):
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self._steps: list[tuple[int, float, float]] = []  # (tokens, step seconds, data seconds)
        self._interval_start = 0  # index into _steps of the first step since the last read

    def add_step(self, tokens: int, step_s: float, data_s: float) -> None:
        self._steps.append((tokens, step_s, data_s))

    def read_interval(self, *, steps_left: int) -> dict[str, float]:
        """tokens_per_s (step + data time) and mfu (when the peak is known) since the last read; eta_s
        from the steps after WARMUP_STEPS (None before there are any)."""
        interval = self._steps[self._interval_start:]
        self._interval_start = len(self._steps)
        tokens = sum(t for t, _, _ in interval)
        seconds = max(sum(s + d for _, s, d in interval), 1e-9)
        tokens_per_s = tokens / seconds
        # No ETA from the warm-up steps: the first compiles, loads and faults in memory, and its
        # time would inflate the ETA several times over (12m for a 3-minute run).
        steady = self._steps[WARMUP_STEPS:]
        eta_s = sum(s + d for _, s, d in steady) / len(steady) * steps_left if steady else None
        record = {"tokens_per_s": tokens_per_s, "eta_s": eta_s}
        if self.peak_flops:
            record["mfu"] = tokens_per_s * self.flops_per_token / self.peak_flops
        return record

    def steady_state(self) -> SteadyState | None:
        """Over the steps after WARMUP_STEPS (None when the run had no more)."""
        steady = self._steps[WARMUP_STEPS:]
        if not steady:
            return None
        tokens = sum(t for t, _, _ in steady)
        step_s = sum(s for _, s, _ in steady)
        data_s = sum(d for _, _, d in steady)
        tokens_per_s = tokens / max(step_s, 1e-9)
        mfu = tokens_per_s * self.flops_per_token / self.peak_flops if self.peak_flops else None
        return SteadyState(
            steps=len(steady), tokens_per_s=tokens_per_s, mfu=mfu, step_s=step_s / len(steady),
            data_share=data_s / max(step_s + data_s, 1e-9),
        )


def _format_record(record: dict[str, Any]) -> str:
    parts = [f"step {record['step']}/{record['total_steps']}", f"loss {record['loss']:.4f}"]
    if record.get("mtp_loss") is not None:
        parts.append(f"mtp_loss {record['mtp_loss']:.4f}")
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
    if record.get("eta_s") is not None and record["step"] < record["total_steps"]:
        parts.append(f"ETA {format_duration(record['eta_s'])}")
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
            except (ValueError, TypeError, KeyError, RecursionError):
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

    def summary(self, fields: dict[str, Any]) -> None:
        """Merge `fields` into the run folder's summary.json (the run's end figures, for scripts)."""
        if not self.enabled:
            return
        path = self.path.parent / SUMMARY_FILE
        try:
            current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (ValueError, RecursionError):  # damaged since the last write: this run's figures replace it
            current = {}
        if not isinstance(current, dict):
            current = {}
        path.write_text(json.dumps({**current, **fields}, indent=2) + "\n", encoding="utf-8")

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
