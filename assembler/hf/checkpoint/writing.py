"""Export an assembled model as an HF Qwen3.5 folder that transformers, vLLM and SGLang load.

Layout: `model-0000i-of-0000N.safetensors` shards (each at most `shard_size` bytes unless one
tensor is larger) + `model.safetensors.index.json` + `config.json` generated from the spec +
tokenizer / chat template / processor / generation files + the source's `mtp.*` tensors, verbatim
(a model with a head of its own, `model.mtp`, writes its trained `mtp.*` instead).
The side files are copied from the source folder when there is one, else written from the tokenizer
and settings training used (serving_files.py: random init, trained from scratch). Dtypes follow
dtype_policy.

A model with LoRA adapters (assembler.adapters) is written merged: each adapted weight as
W + (alpha / r) B A, summed in fp32, and no adapter tensor (the adapters alone are a PEFT folder:
assembler/adapters/peft_folder.py).

Atomic: everything is written into a hidden temporary folder beside the target, fsynced, then
renamed onto the final name (swapped with an earlier export in one `renameat2(RENAME_EXCHANGE)`
where the OS has it); on any error the temporary folder is removed, and a crash leaves at most a
`.NAME.partial-*` / `.NAME.old-*` folder beside NAME, never a half-written NAME. The next export
to NAME removes those leftovers.

What is replaced: an export carries the marker file `.assemble-export`, and `overwrite` replaces
only a folder holding it (or an empty one). Anything else, a folder the export reads from, or a
folder containing one, is refused. A symlinked NAME is followed: the folder it points to is the
target (the same rules apply to it) and the link itself is left as it is; a dangling link is refused.

FSDP2: every rank calls this (each tensor is all-gathered with `full_tensor`, in the same order on
every rank); only rank 0 holds a gathered shard and writes, so N ranks give the files one rank gives.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from assembler.parallel.distributed import first_failure_of_any_rank, process_rank, raise_on_every_rank, shared_by_every_rank
from assembler.common.durable_files import follow_umask, fsync_dir, fsync_file, is_disk_full
from assembler.model.family import family_of
from assembler.hf.checkpoint.dtype_policy import EXPORT_DTYPE, TIED_HEAD_KEY, export_dtype, is_written
from assembler.hf.checkpoint.errors import CheckpointError
from assembler.hf.checkpoint.extra_tensors import ExtraTensorSource, carry_extra_config
from assembler.hf.checkpoint.loading import HF_SOURCE_ATTRIBUTE
from assembler.adapters.lora_linear import LoraLinear
from assembler.hf.checkpoint.model_tensors import ModelTensor, full_tensor, is_adapter_tensor, is_dtensor, model_tensors
from assembler.hf.checkpoint.reading import CONFIG_FILE, INDEX_FILE
from assembler.hf.checkpoint.serving_files import serving_files

DEFAULT_SHARD_SIZE = 5 * 10**9  # bytes; "5GB" as transformers counts
SHARD_NAME = "model-{index:05d}-of-{count:05d}.safetensors"
# Files of the source folder an export needs besides the weights: tokenizer, chat template,
# image/video processor, generation defaults, license. Weights and config are regenerated.
SOURCE_FILE_PATTERN = re.compile(
    r"^(tokenizer.*|vocab\.json|merges\.txt|special_tokens_map\.json|added_tokens\.json|chat_template.*"
    r"|preprocessor_config\.json|video_preprocessor_config\.json|processor_config\.json"
    r"|generation_config\.json|LICENSE.*)$"
)
# Written into every export: `overwrite` replaces only a folder that holds it (a folder this
# project wrote), never a user's folder that happens to be named like the target.
EXPORT_MARKER = ".assemble-export"
SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def save_hf_checkpoint(
    model: nn.Module,
    out_dir: str | Path,
    spec,
    source_dir: str | Path | None = None,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    *,
    dtype: torch.dtype = EXPORT_DTYPE,
    overwrite: bool = False,
    inputs: tuple[str | Path, ...] = (),
) -> Path:
    """Write `model` as an HF folder at `out_dir` (see the module docstring); returns `out_dir`.

    `source_dir`: the HF folder the model was loaded from, if any; its tokenizer/processor files
    are copied and its `mtp.*` tensors carried through. Default: the folder `load_hf_checkpoint`
    last loaded `model` from. Without one, those files are written from the spec's tokenizer and
    settings (serving_files.py). `shard_size`: bytes, or "500MB" / "5GB".
    `dtype`: the dtype of every tensor but the fp32 ones of the policy. An existing non-empty
    `out_dir` is an error unless `overwrite`, and even then unless it is an earlier export (it holds
    EXPORT_MARKER). `inputs`: folders the weights were read from (besides `source_dir`); `out_dir`
    may be neither one of them nor a folder containing one.
    """
    given_out_dir = Path(out_dir)
    out_dir = export_target(given_out_dir)
    if source_dir is None:  # the folder the model was loaded from, if any: its mtp.* and side files
        source_dir = getattr(model, HF_SOURCE_ATTRIBUTE, None)
    limit = parse_size(shard_size)
    tie = spec.settings.model.text.tie_word_embeddings
    # A LoRA model exports merged: each adapted weight is written as W + (alpha / r) B A (_merged).
    tensors_by_name = {name: entry for name, entry in model_tensors(model).items() if not is_adapter_tensor(name)}
    _check_model_matches_spec(tensors_by_name, spec)
    entries = [entry for name, entry in tensors_by_name.items() if is_written(name, tie)]
    is_writer = process_rank() == 0

    # Everything that can fail for a user reason is checked before the first collective, on the
    # writer, and the verdict is shared so no rank is left waiting in an all-gather.
    failure, extras, config, side_files = None, ExtraTensorSource(None), {}, {}
    if is_writer:
        try:
            check_export_target(given_out_dir, overwrite, inputs=(*inputs, *((source_dir,) if source_dir else ())))
            remove_stale_siblings(out_dir)
            extras = ExtraTensorSource.carried_for(_open_source(source_dir).folder, tensors_by_name)
            collisions = sorted(set(extras.names) & {entry.name for entry in entries})
            if collisions:
                raise CheckpointError(f"{source_dir}: extra tensors {collisions} collide with the model's own tensors")
            config = _config_json(spec, dtype, extras)
            if source_dir is None:
                side_files = serving_files(spec)
        except CheckpointError as err:
            failure = str(err)
    raise_on_every_rank(failure, CheckpointError)

    fp32_suffixes = family_of(spec).fp32_export_suffixes
    sizes = [(entry.name, entry.tensor.numel() * export_dtype(entry.name, dtype, fp32_suffixes=fp32_suffixes).itemsize)
             for entry in entries]
    sizes += [(extra.name, extra.nbytes) for extra in extras.entries]
    shards = plan_shards(sizes, limit)
    tensors = _export_tensors(entries, dtype, fp32_suffixes, extras, is_writer)
    if not is_writer:
        for _ in tensors:  # take part in every all-gather, hold nothing
            pass
        failure = first_failure_of_any_rank(None)  # rank 0's verdict on the write
        if failure is not None:
            raise shared_by_every_rank(CheckpointError(failure))
        return given_out_dir

    partial = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        partial.mkdir(parents=True)
        weight_map: dict[str, str] = {}
        for index, names in enumerate(shards, start=1):
            file = SHARD_NAME.format(index=index, count=len(shards))
            shard = {}
            for name in names:
                got, tensor = next(tensors)
                assert got == name, f"export order broke: expected {name}, got {got}"
                shard[name] = tensor
            save_file(shard, str(partial / file), metadata={"format": "pt"})
            follow_umask(partial / file)
            fsync_file(partial / file)
            weight_map.update(dict.fromkeys(names, file))
            del shard
        total_size = sum(size for _, size in sizes)
        _write_json(partial / INDEX_FILE, {"metadata": {"total_size": total_size}, "weight_map": weight_map})
        _write_json(partial / CONFIG_FILE, config)
        if source_dir is not None:
            _copy_source_files(Path(source_dir), partial)
        for name, text in side_files.items():
            (partial / name).write_text(text, encoding="utf-8")
            fsync_file(partial / name)
        extras.log_carried()
        _write_json(partial / EXPORT_MARKER, {"written_by": "assemble export", "format": 1})
        fsync_dir(partial)
        _publish(partial, out_dir, overwrite)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        # The other ranks are still gathering the remaining tensors with this one: take part in
        # those all-gathers, then tell them, so no rank is left waiting in a collective.
        for _ in tensors:
            pass
        if not is_disk_full(error):
            first_failure_of_any_rank(f"the export failed on rank 0: {error!r}")
            raise
        failure = first_failure_of_any_rank(
            f"{given_out_dir}: the disk is full (no space left) while exporting; nothing was written there "
            f"({'the earlier export is untouched' if out_dir.exists() else 'the partial folder was removed'}). "
            "Free space or choose another export path, and run the export again"
        )
        raise shared_by_every_rank(CheckpointError(failure)) from None
    first_failure_of_any_rank(None)
    return given_out_dir


def plan_shards(sizes: list[tuple[str, int]], shard_size: int) -> list[list[str]]:
    """Greedy, in order: a new shard starts when the next tensor would push this one past `shard_size`."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes:
        if shards[-1] and used + size > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "500MB", "5GB", "2GiB" (units as transformers reads them)."""
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", str(size).upper())
        if not match:
            raise CheckpointError(f"shard size {size!r}: expected bytes or a size like 500MB, 5GB, 2GiB")
        value = int(float(match.group(1)) * SIZE_UNITS[match.group(2) or "B"])
    if value <= 0:
        raise CheckpointError(f"shard size {size!r}: must be positive")
    return value


def _export_tensors(
    entries: list[ModelTensor], dtype: torch.dtype, fp32_suffixes: tuple[str, ...], extras: ExtraTensorSource, is_writer: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, CPU tensor in its export dtype), model tensors in model order then the extras.

    Every rank runs the model part (each full_tensor is a collective); only the writer keeps results.
    """
    for entry in entries:
        tensor = _merged(entry, full_tensor(entry))
        if is_writer:
            # copy=True: the export never shares storage with the live model (save_file refuses shared storage)
            yield entry.name, tensor.to(device="cpu", dtype=export_dtype(entry.name, dtype, fp32_suffixes=fp32_suffixes),
                                        copy=True).contiguous()
        else:
            yield entry.name, tensor.new_empty(0)
        del tensor
    if is_writer:
        yield from extras.read(extras.names)


def _merged(entry: ModelTensor, tensor: torch.Tensor) -> torch.Tensor:
    """The full weight `tensor` of `entry` with its LoRA update added (fp32) when a LoraLinear holds
    it, else `tensor`. The adapters are all-gathered under FSDP2: every rank calls this, in order."""
    lora = next((module for module, attr in entry.slots if isinstance(module, LoraLinear) and attr == "weight"), None)
    if lora is None:
        return tensor
    gathered = [w.detach().full_tensor() if is_dtensor(w) else w.detach() for w in (lora.lora_A.weight, lora.lora_B.weight)]
    return lora.merged_weight(tensor, *gathered)


def _check_model_matches_spec(tensors_by_name: dict[str, ModelTensor], spec) -> None:
    """The config.json comes from the spec, so the weights must be the spec's model: same names,
    same shapes (checked against the spec's model built on the meta device, which costs nothing)."""
    from assembler.model.build import build_model

    expected = {name: tuple(e.tensor.shape) for name, e in model_tensors(build_model(spec, device="meta")).items()}
    actual = {name: tuple(e.tensor.shape) for name, e in tensors_by_name.items()}
    if actual == expected:
        return
    if TIED_HEAD_KEY in actual and TIED_HEAD_KEY not in expected:
        raise CheckpointError(
            f"{TIED_HEAD_KEY} is a separate tensor but spec {spec.name!r} ties it to the embedding; exporting would "
            "drop it. Re-tie the model (model.tie_weights(), needed again after to_empty) or export with a spec "
            "that unties them."
        )
    missing, unexpected = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    reshaped = sorted(n for n in set(actual) & set(expected) if actual[n] != expected[n])
    details = [f"missing {missing[:10]}" if missing else "", f"not in the spec {unexpected[:10]}" if unexpected else "",
               f"other shapes {[(n, list(actual[n]), list(expected[n])) for n in reshaped[:5]]}" if reshaped else ""]
    raise CheckpointError(
        f"the model to export is not the model spec {spec.name!r} describes ({'; '.join(d for d in details if d)}); "
        "config.json would not match the weights. Export with the spec the model was built from."
    )


def _open_source(source_dir: str | Path | None) -> ExtraTensorSource:
    try:
        return ExtraTensorSource.open(source_dir)
    except CheckpointError as err:
        raise CheckpointError(
            f"source folder {source_dir} (tokenizer / processor files and mtp.* tensors are copied from it) "
            f"cannot be used:\n{err}"
        ) from None


def _config_json(spec, dtype: torch.dtype, extras: ExtraTensorSource) -> dict:
    from assembler.hf.config import hf_config_from_spec

    config = hf_config_from_spec(spec, dtype=str(dtype).removeprefix("torch."))
    if extras.folder is not None and extras.entries:
        config = carry_extra_config(extras.folder.config, config)
    return config


def export_target(out_dir: Path) -> Path:
    """The folder an export to `out_dir` replaces: `out_dir`, or where it points when it is a symlink."""
    out_dir = Path(out_dir)
    return out_dir.resolve() if out_dir.is_symlink() else out_dir


def check_export_target(out_dir: Path, overwrite: bool, *, inputs: tuple[str | Path, ...] = ()) -> None:
    """Refuse (CheckpointError) an export target that is not ours to replace; see the module docstring."""
    given = Path(out_dir)
    if given.is_symlink() and not given.exists():
        raise CheckpointError(f"{given}: is a symlink to {os.readlink(given)}, which does not exist; "
                              "point it at an existing folder or choose another export path")
    target = export_target(given)
    shown = f"{given} (a symlink to {target})" if target != given else f"{given}"
    real = target.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if real == source or real in source.parents:
            what = "is" if real == source else "contains"
            raise CheckpointError(
                f"{shown}: {what} the folder the export reads from ({source}); replacing it would delete the "
                "source. Choose another export path"
            )
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{shown}: exists and is not a folder; choose another export path")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not overwrite:
        raise CheckpointError(f"{shown}: already exists and is not empty; choose another path or pass overwrite (--overwrite)")
    if not (target / EXPORT_MARKER).is_file():
        raise CheckpointError(
            f"{shown}: is not a folder `assemble export` wrote (it has no {EXPORT_MARKER} marker), so --overwrite "
            "will not replace it; choose another export path, or empty or remove that folder yourself"
        )


def remove_stale_siblings(out_dir: Path) -> None:
    """Remove the `.NAME.partial-*` / `.NAME.old-*` folders that killed exports to `out_dir` left."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    stale = re.compile(rf"^\.{re.escape(out_dir.name)}\.(partial|old)-[0-9a-f]{{8}}$")
    for sibling in parent.iterdir():
        if stale.match(sibling.name) and sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)


def _publish(partial: Path, out_dir: Path, overwrite: bool) -> None:
    """Put the finished folder at `out_dir`. An earlier export there is swapped with it in one atomic
    rename where the OS can (Linux renameat2 RENAME_EXCHANGE), else moved aside first; it is
    removed after, so `out_dir` is always either the old export or the new one, never a mix."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite or not (out_dir / EXPORT_MARKER).is_file():  # re-checked: it may have changed meanwhile
            raise CheckpointError(f"{out_dir}: changed while exporting (it is no longer an earlier export); the export was not written")
        if _rename_exchange(partial, out_dir):
            old = partial  # now holds the earlier export
        else:
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, old)
            os.rename(partial, out_dir)
    else:
        old = None
        os.rename(partial, out_dir)  # POSIX: replaces an empty folder atomically
    fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the OS or filesystem cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _copy_source_files(source_dir: Path, partial: Path) -> None:
    for path in sorted(source_dir.iterdir()):
        if path.is_file() and SOURCE_FILE_PATTERN.match(path.name):
            shutil.copyfile(path, partial / path.name)
            fsync_file(partial / path.name)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")
    fsync_file(path)
