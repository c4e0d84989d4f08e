"""HF Qwen3.5 checkpoint I/O: load safetensors folders into an assembled model, export them back.

    load_hf_checkpoint(model, dir, spec=None)            # validate, then stream shard by shard
    save_hf_checkpoint(model, dir, spec, source_dir=None, shard_size=...)  # atomic sharded export

Errors about the user's files are CheckpointError (the CLI exits 2 without a traceback).
"""

from assembler.hf.checkpoint.errors import CheckpointError
from assembler.hf.checkpoint.loading import LoadedCheckpoint, load_hf_checkpoint
from assembler.hf.checkpoint.writing import DEFAULT_SHARD_SIZE, save_hf_checkpoint

__all__ = ["CheckpointError", "DEFAULT_SHARD_SIZE", "LoadedCheckpoint", "load_hf_checkpoint", "save_hf_checkpoint"]
