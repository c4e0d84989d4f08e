"""torchtitan 0.3.0's own Qwen3.5 4B, trained the way torchtitan trains it, as an anchor row beside
ours and transformers + Liger (issue 22, item 4), measured exactly like benchmarks/hf_baseline.py.

What is torchtitan's, called, not copied: the model (`model_registry("4B")`, flex attention, fla's
chunked delta rule), `update_from_config`, the 1-rank process group (`dist_utils.init_distributed`),
`ParallelDims`, `parallelize_qwen3_5` (full activation checkpointing, per-block torch.compile with
fullgraph, FSDP2 with bf16 compute and fp32 reduce over fp32 parameters), `init_weights`, the
chunked cross-entropy (`ChunkedLossWrapper`, loss compiled too), `default_adamw(lr=5e-4)` (fused,
fp32 states), the warm-up scheduler, `clip_grad_norm_` (max_norm 1.0) and the CUDA graph around
forward + backward (`wrap_with_cuda_graph`, on in torchtitan unless `training.disable_cuda_graphs`).
Those settings are `config_registry.qwen35_4b()`'s, rebuilt here because importing that module needs
torchvision (its multimodal data loader), which the GPU image lacks; its compile is off by default
(torchtitan users turn it on with `--compile.enable`), on here unless `--no-compile`.

Differences from `qwen35_4b()`, each said: one sequence of `--seq` synthetic tokens per step (its
config: 4 x 4096), one document per row (positions 0..seq-1); the vision tower is dropped after
the build (the flavour always builds it; `parallelize_qwen3_5` skips a `None` tower), so the row is
text-only like hf_baseline's; no data loader, tokenizer, checkpointer or metrics logger. MFU uses
hf_baseline's flops per token (`training_flops` over the text matmul weights of this model).

    python benchmarks/torchtitan_anchor.py --seq 8192 --json baseline_torchtitan.json
    python benchmarks/torchtitan_anchor.py --dry-run      # CPU: build on meta, count parameters

Needs torchtitan 0.3.0 and what its import path needs beyond the GPU image (benchmarks/titan_wheels.sh).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import tempfile
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assembler import load_spec  # noqa: E402
from assembler.bench.report import format_breakdown, format_rows, save  # noqa: E402
from assembler.bench.workload import TEXT_TOKEN_RANGE, training_flops  # noqa: E402
from assembler.spec.errors import USER_ERROR_EXIT_CODE  # noqa: E402
from assembler.train.metrics import matmul_weight_flops_per_token  # noqa: E402

SPEC = ROOT / "specs" / "qwen3_5_4b.yaml"
FLAVOR = "4B"


def stand_in_for_datasets() -> None:
    """torchtitan.trainer (imported by `Decoder.Config.update_from_config`) imports its validator,
    whose text data set module does `from datasets import Dataset, load_dataset` and
    `from datasets.distributed import split_dataset_by_node` at import time. No name is used on
    this path (no data set is built), and `datasets` with pyarrow would not fit the 64 MiB a device
    call carries, so where it is not installed these names stand in and raise if ever called."""
    if importlib.util.find_spec("datasets") is not None:
        return

    def not_installed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("the `datasets` package is not installed; benchmarks/torchtitan_anchor.py builds no data set")

    datasets = types.ModuleType("datasets")
    distributed = types.ModuleType("datasets.distributed")
    datasets.Dataset = type("Dataset", (), {"__init__": not_installed})
    datasets.load_dataset = not_installed
    distributed.split_dataset_by_node = not_installed
    datasets.distributed = distributed
    sys.modules["datasets"] = datasets
    sys.modules["datasets.distributed"] = distributed


def stand_in_for_data_parallel_mesh_dims() -> bool:
    """torchtitan 0.3.0 is built against a newer torch than the GPU image's 2.11: its
    distributed/fsdp.py and full_dtensor.py do `from torch.distributed.fsdp import
    DataParallelMeshDims` at import time, a class torch 2.11.0 lacks (2.13 has it). On this path the
    name only annotates parameters: it is built by the full_dtensor/spmd_types backends alone, and
    the one fully_shard call that passes `dp_mesh_dims` even when None is the vision tower's, which
    is dropped. So where torch lacks it, a placeholder that raises if ever built stands in.
    Returns whether it did."""
    import torch.distributed.fsdp as fsdp

    if hasattr(fsdp, "DataParallelMeshDims"):
        return False

    class DataParallelMeshDims:
        def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003
            raise RuntimeError(f"torch {torch.__version__} has no torch.distributed.fsdp.DataParallelMeshDims; "
                               "benchmarks/torchtitan_anchor.py runs the partial_dtensor backend, which never builds one")

    fsdp.DataParallelMeshDims = DataParallelMeshDims
    return True


def titan_config(seq_len: int, *, compile_model: bool, cuda_graphs: bool):  # noqa: ANN201
    """`config_registry.qwen35_4b()`'s Trainer.Config, one sequence of `seq_len` tokens per step."""
    from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
    from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw
    from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
    from torchtitan.distributed.activation_checkpoint import FullAC
    from torchtitan.models.common.config_utils import decoder_vocab_size
    from torchtitan.models.qwen3_5 import model_registry
    from torchtitan.trainer import Trainer

    model_spec = model_registry(FLAVOR)
    return Trainer.Config(
        loss=ChunkedLossWrapper.Config(loss_fn=CrossEntropyLoss.Config(global_vocab_size=decoder_vocab_size(model_spec))),
        model_spec=model_spec,
        optimizer=default_adamw(lr=5e-4),
        lr_scheduler=LRSchedulersContainer.Config(warmup_steps=20),
        training=TrainingConfig(local_batch_size=1, seq_len=seq_len, steps=1000, disable_cuda_graphs=not cuda_graphs),
        parallelism=ParallelismConfig(data_parallel_shard_degree=-1),
        activation_checkpoint=FullAC.Config(),
        compile=CompileConfig(enable=compile_model),
        dump_folder=str(Path(tempfile.gettempdir()) / "torchtitan_anchor"),  # its flight-recorder traces, not the repo
    )


def build_on_meta(config):  # noqa: ANN001, ANN201
    """The model as Trainer.__init__ builds it: config updated from the trainer's, built on meta
    in the training dtype; then the vision tower dropped (see the module docstring)."""
    from torchtitan.config import TORCH_DTYPE_MAP
    from torchtitan.tools import utils

    model_config = config.model_spec.model
    model_config.update_from_config(config=config)
    with torch.device("meta"), utils.set_default_dtype(TORCH_DTYPE_MAP[config.training.dtype]):
        model = model_config.build()
    model.verify_module_protocol()
    model.vision_encoder = None
    return model


def label(*, compile_model: bool, cuda_graphs: bool) -> str:
    return "torchtitan 0.3.0, full AC" + ("" if compile_model else ", eager") + ("" if cuda_graphs else ", no CUDA graph")


def parallelize_and_init(model, config):  # noqa: ANN001, ANN201
    """Trainer.__init__ from the process group to the optimizer (one GPU, no pipeline)."""
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed import utils as dist_utils
    from torchtitan.tools import utils

    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "localhost",
                        "MASTER_PORT": "29517"}.items():
        os.environ.setdefault(name, value)
    device = utils.get_local_device()
    utils.device_module.set_device(device)
    world_size = dist_utils.init_distributed(config.comm, base_folder=config.dump_folder)
    parallel_dims = ParallelDims.from_config(config.parallelism, world_size)
    dist_utils.set_spmd_backend(config.parallelism.spmd_backend)
    dist_utils.set_determinism(parallel_dims, device, config.debug, distinct_seed_mesh_dims=["pp"])

    loss_fn = config.loss.build(compile_config=config.compile)
    model = config.model_spec.parallelize_fn(
        model, parallel_dims=parallel_dims, training=config.training, parallelism=config.parallelism,
        compile_config=config.compile, ac_config=config.activation_checkpoint, dump_folder=config.dump_folder,
    )
    model.to_empty(device=utils.device_type)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    model.train()
    loss_fn.set_lm_head(model.lm_head)
    model._skip_lm_head = True

    optimizers = config.optimizer.build(model_parts=[model])
    config.model_spec.post_optimizer_build_fn(optimizers, [model], parallel_dims)
    lr_schedulers = config.lr_scheduler.build(optimizers=optimizers, training_steps=config.training.steps)
    return model, parallel_dims, loss_fn, optimizers, lr_schedulers


def training_step(model, config, parallel_dims, loss_fn, optimizers, lr_schedulers, seq_len: int):  # noqa: ANN001, ANN201
    """Trainer.train_step on one synthetic row: zero_grad, the forward + backward body (under the
    CUDA graph unless disabled), clip, optimizer and scheduler steps. Returns `step()`."""
    import spmd_types as spmd
    from torchtitan.distributed import utils as dist_utils
    from torchtitan.distributed.cudagraph import wrap_with_cuda_graph
    from torchtitan.tools import utils

    device = torch.device(utils.device_type, torch.cuda.current_device())
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, TEXT_TOKEN_RANGE, (1, seq_len + 1), generator=generator).to(device)
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    positions = torch.arange(seq_len, device=device).unsqueeze(0)  # one document per row
    # Trainer.post_dataloading_process: flex attention (and the delta rule) take masks from positions.
    extra_kwargs = {"positions": positions, "attention_masks": model.get_attention_masks(positions=positions)}
    global_valid_tokens = torch.tensor(labels.numel(), device=device)
    train_context = dist_utils.get_spmd_context(parallel_dims=parallel_dims, spmd_typechecking=False)

    def forward_backward(inputs, labels, global_valid_tokens, extra_kwargs):  # noqa: ANN001, ANN202
        with train_context():  # Trainer._forward_backward_body
            pred = model(inputs, **extra_kwargs)
            loss, _ = loss_fn(pred, labels, global_valid_tokens, positions=extra_kwargs["positions"])
            del pred
            with spmd.no_typecheck():
                loss.backward()
        return loss

    fwd_bwd = forward_backward if config.training.disable_cuda_graphs else wrap_with_cuda_graph(forward_backward)

    def step() -> None:
        optimizers.zero_grad(set_to_none=config.training.disable_cuda_graphs)
        fwd_bwd(inputs, labels, global_valid_tokens, extra_kwargs)
        dist_utils.clip_grad_norm_(list(model.parameters()), config.training.max_norm, foreach=True,
                                   pp_mesh=parallel_dims.get_optional_mesh("pp"), ep_enabled=parallel_dims.ep_enabled)
        optimizers.step()
        lr_schedulers.step()

    return step


def capture_graph(step) -> float:  # noqa: ANN001
    """The two steps before the CUDA graph replays: an eager one (compiles), then the capture (which
    also runs the step). Returns the capture step's peak allocated GiB: a replay allocates nothing,
    so the timed steps' peak alone would leave out the activations that live in the graph's pool."""
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, action="append", default=None, help="tokens per step (repeatable; default 8192)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (with the CUDA graph: after its eager and capture steps)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="torchtitan's default for the 4B config: no torch.compile")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="torchtitan's training.disable_cuda_graphs")
    parser.add_argument("--json", default=None)
    parser.add_argument("--dry-run", action="store_true", help="build on meta only (CPU), print the parameter count")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    seqs = args.seq or [8192]
    compile_model, cuda_graphs = not args.no_compile, not args.no_cuda_graphs

    stand_in_for_datasets()
    if stand_in_for_data_parallel_mesh_dims():
        print(f"torch {torch.__version__} lacks torch.distributed.fsdp.DataParallelMeshDims, which torchtitan 0.3.0 "
              "imports: a placeholder stands in (annotations only on this path)")
    try:
        import torchtitan.models.qwen3_5  # noqa: F401
        import torchtitan.trainer  # noqa: F401
    except ImportError as error:
        print(f"benchmarks/torchtitan_anchor.py: cannot import torchtitan's Qwen3.5 model or trainer: {error}. "
              "Install torchtitan 0.3.0 and the wheels benchmarks/titan_wheels.sh downloads (pip install --no-deps "
              "--target DIR .whl/*.whl, then PYTHONPATH=DIR), with fla and tensorboard.", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    # The rope cache is sized to the trainer's seq_len; the largest size covers every row.
    config = titan_config(max(seqs), compile_model=compile_model, cuda_graphs=cuda_graphs)
    model = build_on_meta(config)
    matmul_flops = matmul_weight_flops_per_token(model)  # 6·N, as hf_baseline (titan's Linear, Conv1d are torch's)
    params = sum(p.numel() for p in model.parameters())
    # torchtitan does not tie the embedding to the LM head (HF's Qwen3.5-4B does): one more V x H.
    untied = 0 if model.enable_weight_tying else model.tok_embeddings.weight.numel()
    print(f"torchtitan qwen3_5 {FLAVOR}, text only: {params:,} parameters ({params / 1e9:.2f} B; "
          f"{(params - untied) / 1e9:.2f} B with the embedding tied as HF's); {matmul_flops // 6:,} matmul weights")
    if args.dry_run:
        return

    from assembler.bench.measure import Measurement, measure_training_step
    from blocks.ops.fast_delta_rule import fla_backward_is_safe
    from torchtitan.distributed.cudagraph import cudagraph_teardown

    spec = load_spec(SPEC)
    # The same fla backward guard lift hf_baseline applies (Hopper, Triton < 3.7.1, key head dim 128).
    fla_backward_is_safe(spec.settings.model.text.layer_types["linear"]["mixer"]["key_head_dim"])
    model, parallel_dims, loss_fn, optimizers, lr_schedulers = parallelize_and_init(model, config)
    results = []
    for seq_len in seqs:
        step = training_step(model, config, parallel_dims, loss_fn, optimizers, lr_schedulers, seq_len)
        row_label = label(compile_model=compile_model, cuda_graphs=cuda_graphs)
        try:
            capture_peak_gib = capture_graph(step) if cuda_graphs else 0.0
        except torch.OutOfMemoryError:
            results.append(Measurement(label=row_label, tokens_per_step=seq_len, device=torch.cuda.get_device_name(), error="OOM"))
        else:
            result = measure_training_step(
                step, label=row_label, tokens_per_step=seq_len,
                flops_per_step=training_flops(matmul_flops, spec.settings.model.text, seq_len),
                steps=args.steps, warmup=args.warmup, profile=not args.no_profile,
                cleanup=lambda: optimizers.zero_grad(set_to_none=True),
            )
            if result.peak_gib is not None:
                result.peak_gib = max(result.peak_gib, capture_peak_gib)
            results.append(result)
        # Each size is its own torchtitan run (a fixed seq_len): drop this size's graph and compiled code.
        cudagraph_teardown()
        torch._dynamo.reset()
        print(format_rows(results[-1:]), flush=True)
        if args.json:
            save(results, args.json)
    print(f"device: {torch.cuda.get_device_name()}")
    print(format_rows(results))
    for result in results:
        if result.breakdown:
            print(format_breakdown(result))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
