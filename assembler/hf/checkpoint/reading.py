"""Reading an HF model folder: config.json, the safetensors index and its shards.

Everything is checked before any tensor is read: the index names only shards that exist, every
shard's header is complete and its data fully present (a truncated download is caught here, by
file name), and the index agrees with what the shards hold. Only safetensors are ever read; a
folder with pickled weights (`pytorch_model.bin`) is refused, never unpickled.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from assembler.hf.checkpoint.errors import CheckpointError

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin")

# safetensors dtype codes → bytes per element (the header names dtypes by these codes)
SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; a bigger "header" is a corrupt file


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a shard header describes it (nothing read yet)."""

    name: str
    file: str
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class CheckpointFolder:
    """A validated HF model folder: its config and where every tensor lives."""

    path: Path
    config: dict
    tensors: dict[str, TensorEntry]  # name → entry, in shard order then header order

    @property
    def shard_files(self) -> list[str]:
        return list(dict.fromkeys(entry.file for entry in self.tensors.values()))


def open_checkpoint_folder(path: str | Path) -> CheckpointFolder:
    """Validate an HF model folder and index its tensors; raises CheckpointError naming the bad file."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a directory; expected an HF model folder with {CONFIG_FILE} and *.safetensors")
    config = read_config(folder)
    shard_keys = _shard_keys_from_index(folder)
    tensors: dict[str, TensorEntry] = {}
    for file, keys_in_index in shard_keys.items():
        header = read_safetensors_header(folder / file)
        if keys_in_index is not None:
            missing = sorted(set(keys_in_index) - set(header))
            if missing:
                raise CheckpointError(
                    f"{folder / INDEX_FILE} maps {len(missing)} tensor(s) to {file}, which does not contain them: "
                    f"{_preview(missing)}. The index and the shards are from different checkpoints; re-download the folder."
                )
            not_indexed = sorted(set(header) - set(keys_in_index))
            if not_indexed:
                raise CheckpointError(
                    f"{folder / file} holds tensor(s) the index {INDEX_FILE} does not list: {_preview(not_indexed)}. "
                    "The index and the shards are from different checkpoints; re-download the folder."
                )
        for name, (dtype, shape, nbytes) in header.items():
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} is stored twice: in {tensors[name].file} and in {file} ({folder})")
            tensors[name] = TensorEntry(name=name, file=file, dtype=dtype, shape=shape, nbytes=nbytes)
    return CheckpointFolder(path=folder, config=config, tensors=tensors)


def read_config(folder: Path) -> dict:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing; an HF model folder needs its {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object, found {type(config).__name__}")
    return config


def _shard_keys_from_index(folder: Path) -> dict[str, list[str] | None]:
    """Shard file → the keys the index assigns it (None for a single unindexed file)."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError(f"weight_map is a {type(weight_map).__name__}")
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index_path}: not a safetensors index (needs a \"weight_map\" object): {err}") from None
        shards: dict[str, list[str]] = {}
        for key, file in weight_map.items():
            if not isinstance(file, str) or Path(file).name != file:
                raise CheckpointError(f"{index_path}: tensor {key!r} maps to {file!r}; expected a file name inside the folder")
            shards.setdefault(file, []).append(key)
        missing = [file for file in shards if not (folder / file).is_file()]
        if missing:
            raise CheckpointError(
                f"{index_path} names shard(s) that are not in {folder}: {', '.join(missing)} "
                f"(holding e.g. {shards[missing[0]][0]!r}). The download is incomplete; fetch the missing file(s)."
            )
        return dict(shards)
    if (folder / SINGLE_FILE).is_file():
        return {SINGLE_FILE: None}
    pickled = [name for name in PICKLE_WEIGHT_FILES if (folder / name).exists()]
    if pickled:
        raise CheckpointError(
            f"{folder}: holds only pickled weights ({', '.join(pickled)}); only safetensors are read (pickle can run "
            "arbitrary code). Convert it once with transformers: from_pretrained(...).save_pretrained(out_dir)."
        )
    raise CheckpointError(f"{folder}: no {SINGLE_FILE} and no {INDEX_FILE}; not an HF safetensors model folder")


def read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """name → (dtype code, shape, nbytes) from a shard's JSON header; checks the file is complete.

    A safetensors file is: 8-byte little-endian header length N, N bytes of JSON, then the data;
    the file must end exactly where the last tensor's data ends.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: {size} bytes, too short to be a safetensors file (truncated download?)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(
                    f"{path}: truncated or not a safetensors file (header says {header_len} bytes of metadata, "
                    f"file has {size} bytes in all). Re-download it."
                )
            raw = handle.read(header_len)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError(f"a {type(header).__name__}, not an object")
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: corrupt safetensors header ({err}). Re-download it.") from None
    header.pop("__metadata__", None)
    entries: dict[str, tuple[str, tuple[int, ...], int]] = {}
    data_end = 0
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            if not all(isinstance(n, int) and n >= 0 for n in (*shape, begin, end)) or begin > end:
                raise ValueError("shape and data_offsets must be non-negative integers")
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for {name!r}. Re-download it.") from None
        numel = 1
        for dim in shape:
            numel *= dim
        if dtype not in SAFETENSORS_ITEMSIZE or end - begin != numel * SAFETENSORS_ITEMSIZE[dtype]:
            raise CheckpointError(f"{path}: tensor {name!r} header is inconsistent (dtype {dtype}, shape {list(shape)}, {end - begin} bytes)")
        entries[name] = (dtype, shape, end - begin)
        data_end = max(data_end, end)
    expected = 8 + header_len + data_end
    if size < expected:
        raise CheckpointError(
            f"{path}: truncated: {size} bytes on disk, the header describes {expected}. "
            "The file is incomplete (interrupted download or copy); re-download it."
        )
    return entries


def stream_tensors(folder: CheckpointFolder, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, CPU tensor) for `names`, one shard file open at a time, one tensor in memory at a time."""
    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(folder.tensors[name].file, []).append(name)
    for file, file_names in by_file.items():
        path = folder.path / file
        try:
            with safe_open(str(path), framework="pt", device="cpu") as shard:
                for name in file_names:
                    yield name, shard.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as err:  # safetensors' own checks (SafetensorError is not exported as a stable type)
            if type(err).__name__ != "SafetensorError":
                raise
            raise CheckpointError(f"{path}: cannot be read as safetensors ({err}). Re-download it.") from None


def _preview(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
