"""Issue 12, defect 8: a user error one rank hits alone is printed by that rank, naming it; a step
only some ranks do (the checkpoint marker on rank 0, a shard on any rank) that fails on a full disk
stops every rank together instead of leaving the others waiting in a collective."""

import errno
import multiprocessing
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner
from torch import nn

import assembler.train.checkpoint as checkpoint
import assembler.train.loop as loop
from assembler.parallel import distributed
from assembler.data.records import DataError
from assembler.cli.train import USER_ERROR_EXIT_CODE, train_command
from tests.free_port import free_port

TINY = Path(__file__).resolve().parents[1] / "specs" / "qwen3_5_tiny.yaml"


@pytest.mark.parametrize("rank, shared, expected", [
    (1, False, "error (rank 1): row 7 of captions.jsonl: truncated image"),
    (0, False, "error (rank 0): row 7 of captions.jsonl: truncated image"),
    (1, True, ""),
    (0, True, "error: row 7 of captions.jsonl: truncated image"),
])
def test_who_prints_a_user_error_in_a_distributed_run(monkeypatch, rank, shared, expected):
    def failing_train(spec, **kwargs):
        error = DataError("row 7 of captions.jsonl: truncated image")
        raise distributed.shared_by_every_rank(error) if shared else error

    monkeypatch.setattr(loop, "train", failing_train)
    monkeypatch.setattr(distributed, "is_distributed_run", lambda: True)
    monkeypatch.setattr(distributed, "launch_rank", lambda: rank)
    monkeypatch.setattr(distributed, "teardown", lambda: None)
    result = CliRunner().invoke(train_command, [str(TINY)])
    assert result.exit_code == USER_ERROR_EXIT_CODE, result.output
    assert result.stderr.strip() == expected


def _outcomes_of_two_ranks(arguments, target, *, timeout: float) -> dict[int, str]:
    """Run `target(*arguments(rank, queue))` on two spawned gloo ranks; {rank: what it reported}.
    A rank still running after `timeout` was left waiting in a collective: the test fails."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=target, args=arguments(rank, results)) for rank in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=timeout)
    hung = [w for w in workers if w.is_alive()]
    for worker in hung:
        worker.kill()
    assert not hung, "a rank was left waiting"
    outcomes = dict(results.get(timeout=5) for _ in workers)
    assert set(outcomes) == {0, 1}
    return outcomes


def _save_with_a_full_disk_on(rank: int, world_size: int, port: int, folder: str, full_on: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    real_write = checkpoint.write_durably

    def write(path, writer):
        # rank 0: its rank-0-only marker; rank 1: its own trainer state (rank 0 goes on to the marker)
        if rank == full_on and Path(path).name == ("COMPLETE" if rank == 0 else f"trainer_state_rank{rank}.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, writer)

    checkpoint.write_durably = write
    model = nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    try:
        checkpoint.save_checkpoint(Path(folder) / "step_000001", model=model, optimizer=optimizer, scheduler=scheduler,
                                   step=1, data_state={}, resolved_spec_yaml="name: x\n")
        results.put((rank, "saved"))
    except checkpoint.CheckpointSaveError as error:
        results.put((rank, f"refused, shared={distributed.is_shared_by_every_rank(error)}: {error}"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("full_on", [0, 1])
def test_a_full_disk_on_one_rank_stops_every_rank(tmp_path, full_on):
    port = free_port()
    outcomes = _outcomes_of_two_ranks(lambda r, results: (r, 2, port, str(tmp_path), full_on, results),
                                      _save_with_a_full_disk_on, timeout=120)
    for outcome in outcomes.values():
        assert outcome.startswith("refused, shared=True") and f"rank {full_on}: no space left" in outcome
    assert not (tmp_path / "step_000001").exists()  # the half-written checkpoint is removed


def _export_with_a_full_disk_on_rank_0(rank: int, port: int, folder: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    import assembler.hf.checkpoint.writing as writing
    from assembler import build_model, load_spec
    from assembler.parallel.parallelize import parallelize

    shards_written = []

    def save_file(tensors, path, metadata=None):
        shards_written.append(path)
        if len(shards_written) == 2:  # the disk fills up while the other rank still gathers with us
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save_file(tensors, path, metadata=metadata)

    real_save_file, writing.save_file = writing.save_file, save_file
    spec = load_spec(TINY)
    model = build_model(spec, seed=0)
    parallelize(model, spec)
    try:
        writing.save_hf_checkpoint(model, Path(folder) / "hf", spec, shard_size="20MB")
        results.put((rank, "exported"))
    except writing.CheckpointError as error:
        results.put((rank, f"refused, shared={distributed.is_shared_by_every_rank(error)}: {error}"))
    finally:
        dist.destroy_process_group()


def test_a_full_disk_during_a_sharded_export_stops_every_rank(tmp_path):
    port = free_port()
    outcomes = _outcomes_of_two_ranks(lambda r, results: (r, port, str(tmp_path), results),
                                      _export_with_a_full_disk_on_rank_0, timeout=180)
    for outcome in outcomes.values():
        assert outcome.startswith("refused, shared=True") and "the disk is full" in outcome
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf.partial-*"))
