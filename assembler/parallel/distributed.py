"""This process's place in a distributed job, from torchrun's environment; nothing home-made.

`torchrun` (one node or many, `--nnodes` + `--rdzv-backend c10d --rdzv-endpoint host:port`)
starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Here we
only read them: join the default process group (NCCL on CUDA, gloo on CPU), pick the device by
LOCAL_RANK, and make the 1-D device mesh FSDP2 shards over.

A plain `python`/`assemble` launch (no torchrun environment) on a CUDA machine joins a process
group of one (an in-memory store, nothing to rendezvous with) and shards over it, as torchtitan
applies `fully_shard` at degree 1: one GPU and N GPUs then run the same code (FSDP2's mixed
precision: fp32 master parameters, compute in `param_dtype`; no autocast path to diverge). A plain
launch on the CPU stays one process with no process group and nothing sharded, the path whose
steps are bitwise transformers'.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place in the job. `mesh` is the 1-D data-parallel mesh (None: one plain process)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: Any = None  # torch.distributed.device_mesh.DeviceMesh

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, writes metrics and decides for the run folder."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.mesh is not None


def process_rank() -> int:
    """This process's rank in the default process group; 0 when there is none (a plain process)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def launch_rank() -> int:
    """This process's rank, also before the process group is joined (or after a failed start):
    the process group's when there is one, else torchrun's RANK, else 0 (a plain process).

    For choosing the one process that speaks, e.g. which rank prints a user error that every rank
    hit while reading the spec, before `init_world` ran."""
    if not (dist.is_available() and dist.is_initialized()) and launched_by_torchrun():
        return int(os.environ["RANK"])
    return process_rank()


def is_distributed_run() -> bool:
    """A process group with more than one rank: collectives are needed to agree with the others."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank of the default process group; a no-op for a single process.

    A run that succeeded calls it before `teardown`, so no rank leaves the group while a peer still
    has a collective in flight (its sockets would close under the peer's work; see also
    `leave_process`). Not on an error path: a rank that failed alone would leave the others
    waiting here."""
    if is_distributed_run():
        dist.barrier()


SHARED_ERROR_ATTRIBUTE = "every_rank_has_it"


def shared_by_every_rank(error: BaseException) -> BaseException:
    """Mark `error` as raised alike on every rank (a verdict they agreed on), so only rank 0 prints
    it; an unmarked user error in a distributed run is printed by its own rank, with the rank."""
    setattr(error, SHARED_ERROR_ATTRIBUTE, True)
    return error


def is_shared_by_every_rank(error: BaseException) -> bool:
    return bool(getattr(error, SHARED_ERROR_ATTRIBUTE, False))


def first_failure_of_any_rank(failure: str | None) -> str | None:
    """Every rank's own `failure` (a message, or None) gathered: the lowest failing rank's message
    ("rank r: ..." when several ranks run), the same on every rank; None when no rank failed. Every
    rank must call this: it is how a step any rank may fail alone (a full disk) stops them together."""
    if not is_distributed_run():
        return failure
    failures: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(failures, failure)
    return next((f"rank {rank}: {message}" for rank, message in enumerate(failures) if message is not None), None)


def raise_on_every_rank(failure: str | None, error: type[Exception]) -> None:
    """Raise `error(failure)` on every rank when rank 0's `failure` is a message (None: go on).

    Rank 0 checks something alone (say, the output folder) and every rank must stop together, so
    none is left waiting in a later collective. Every rank must call this; only rank 0's `failure`
    counts."""
    if is_distributed_run():
        box = [failure]
        dist.broadcast_object_list(box, src=0)
        failure = box[0]
    if failure is not None:
        raise shared_by_every_rank(error(failure))


def init_world() -> World:
    """Join torchrun's process group when launched by it (any world size, 1 included: the model is
    then sharded like any other). Otherwise: on a CUDA machine a world of one on cuda:0 (sharded
    the same way), on the CPU a single plain process."""
    if not launched_by_torchrun():
        if not torch.cuda.is_available():
            return World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=device)
        return World(rank=0, world_size=1, local_rank=0, device=device, mesh=device_mesh(device))

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s): "
                "start at most one process per GPU (torchrun --nproc-per-node <= the GPU count)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        if device.type == "cuda":
            # device_id binds the communicator to this rank's GPU at once (no guessing in barriers).
            dist.init_process_group(backend="nccl", device_id=device)
        else:
            dist.init_process_group(backend="gloo")
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=device, mesh=device_mesh(device))


def device_mesh(device: torch.device):  # noqa: ANN201 (DeviceMesh)
    """The 1-D mesh over every rank of the default process group, named `dp`."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("dp",))


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object); `value` itself without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum `value` over every rank, in place (a no-op without a process group); returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def teardown() -> None:
    """Leave the process group (if any), so the job ends without NCCL's 'not destroyed' warning.

    Objects still holding the group's work (a model's FSDP state, an optimizer's DTensors) are
    collected first, while the interpreter is whole: freed later, at interpreter exit, their
    tensors' destructors can run in gloo's worker threads after Python is gone."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def leave_process(exit_code: int = 0) -> NoReturn:
    """End this process now, its work done and on disk, without interpreter finalisation.

    Why: a gloo rank that trained, checkpointed and exported fine is sometimes aborted by torch's
    teardown at interpreter exit ("terminate called without an active exception", so torchrun
    reports exit 1 for a good run). CI saw it on 2 CPU ranks, in `assemble train` and in spawned
    test ranks, under load; never on an idle machine, and the barrier and collection before
    `teardown` did not stop it. Everything a run writes is flushed and fsynced before this point
    (assembler.common.durable_files); only stdio and logging buffers remain, and they are flushed here."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    logging.shutdown()
    os._exit(exit_code)
