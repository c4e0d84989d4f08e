"""What `assemble train` checks before it writes or allocates anything, and what `assemble
validate` warns about: a spec that cannot train as it stands fails in a second with a message
(exit 2), not minutes later with a traceback.

- `spec_warnings`: what stops or spoils a run of the spec as written (no data sources; adapters
  trained on a random-init base); `validate` prints them as warnings.
- `check_can_start`: the errors among them (no data, a missing `train.init_from` folder) and the
  memory estimate of one step (`assembler.train.memory_estimate`) against this machine's memory.
"""

from __future__ import annotations

import torch

from assembler.spec import Spec
from assembler.spec.errors import UserError
from assembler.train.memory_estimate import available_memory, estimate_step_memory


class StartupError(UserError):
    """The spec cannot train here as it stands (a user error, exit 2)."""


NO_DATA = ("data.sources is empty: there is nothing to train on; list your JSONL (or Parquet, Arrow) files "
           "under data.sources, or pass them: -o 'data.sources=[{path: my_chats.jsonl}]'")
RANDOM_BASE = ("train.adapters trains LoRA adapters on a random-init base (train.init_from is null): the adapters "
               "learn around noise; set train.init_from to the model folder to fine-tune")


def spec_warnings(spec: Spec) -> list[str]:
    """What keeps the spec from training as written, or makes the run useless, one line each."""
    warnings, train = [], spec.settings.train
    if not spec.settings.data.sources:
        warnings.append(NO_DATA)
    if train.adapters is not None and not train.init_from:
        warnings.append(RANDOM_BASE)
    return warnings


def check_can_start(spec: Spec, device: torch.device, world_size: int = 1, ranks_per_host: int = 1) -> None:
    """StartupError when the run cannot start: no data, `train.init_from` missing, or one step
    needing more memory than this device (a GPU) or host (the CPU, shared by `ranks_per_host`
    processes) has. Builds on the meta device only."""
    if not spec.settings.data.sources:
        raise StartupError(NO_DATA)
    init_from = spec.settings.train.init_from
    if init_from and not spec.resolve_path(init_from).is_dir():
        raise StartupError(f"train.init_from: {spec.resolve_path(init_from)} is not a folder; point it at the HF model folder "
                           "to start from (paths in a spec are relative to the spec file, on the command line to the "
                           "working directory)")
    if spec.settings.parallel.fsdp.cpu_offload:
        return  # the weights live in host memory then: the estimate below would not say where
    needed = estimate_step_memory(spec, device, world_size)
    available, where = available_memory(device)
    available //= ranks_per_host if device.type == "cpu" else 1
    if needed.total > available:
        raise StartupError(
            f"one training step needs at least {needed.describe()}, and {where} has {available / 2**30:.1f} GiB "
            f"available{' per process' if ranks_per_host > 1 and device.type == 'cpu' else ''}.\n"
            f"To fit: {needed.remedies(spec, device.type)}")
