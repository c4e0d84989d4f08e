"""The batches the train loop consumes: an infinite, deterministic, resumable stream of packed rows.

Epoch e: the samples are shuffled by a `torch.Generator` seeded with `seed + e`, packed into rows
by best-fit decreasing, and the rows shuffled again by the same generator (so long documents do
not all come first). A source weighted `w` (`data.sources[].weight`, default 1) puts each of its
samples floor(w) times into every epoch, plus round(frac(w)·n) more of its n samples drawn anew
each epoch by the same generator: 2 doubles a source, 0.5 takes a different half of it each epoch. The epochs, one after another, form one global stream of rows; with
`world_size` ranks, rank r takes global rows r, r + W, r + 2W, ... — the plan is the same pure
function of (samples, seed, epoch) on every rank, so no communication is needed.

The position is two integers, the same on every rank: `{"epoch", "row"}` of the first row of the
next step. `state_dict()` / `load_state_dict()` carry it through a checkpoint, and a resumed loader
yields exactly the batches the uninterrupted one would have.

With `workers` > 0 (`data.workers`), iterating the loader collates rows in that many worker
processes (torch's DataLoader): worker k collates this rank's rows k, k + workers, ... (decoding
and resizing their images), and DataLoader hands them back in order, prefetched. Only collation
moves: which samples form which row is still planned here, so the batches are the same for any
number of workers, and the position counts the rows handed to the training loop, not those
prefetched.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from assembler.data.chat_template import (
    ENDOFTEXT, IMAGE_PAD, LOSS_ON, VISION_END, VISION_START, EncodedSample, encode_chat, encode_text,
)
from assembler.data.images import ImageProcessor
from assembler.data.packing import PackingStats, collate_row, fit_to_budget, plan_rows
from assembler.data.records import ChatRecord, DataError
from assembler.data.sources import read_source
from assembler.durations import format_duration
from assembler.data.tokenizer import Tokenizer, load_tokenizer
from assembler.data.videos import VideoProcessor
from assembler.spec_sections import DataSettings
from blocks.constants import VISION_TOKEN_KEYS

# The spec's model.tokens key -> the tokenizer's special token it must equal.
SPEC_TOKEN_NAMES = {"image": IMAGE_PAD, "video": "<|video_pad|>", "vision_start": VISION_START,
                    "vision_end": VISION_END, "eos": ENDOFTEXT}


class PackedBatchLoader:
    """Iterable of batch dicts (see `collate_row`); infinite over epochs.

    samples: encoded documents, each at most `budget` tokens.
    """

    def __init__(
        self,
        samples: list[EncodedSample],
        *,
        budget: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        pad_token_id: int,
        image_token_id: int,
        spatial_merge_size: int,
        image_processor: ImageProcessor | None = None,
        stats: PackingStats | None = None,
        workers: int = 0,
        sources: list[int] | None = None,
        weights: list[float] | None = None,
        video_token_id: int | None = None,
        video_processor: VideoProcessor | None = None,
    ):
        if not samples:
            raise DataError("the dataset is empty: no samples left to train on")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.samples = samples
        self.budget = budget
        self.seed = seed
        self.shuffle = shuffle
        self.workers = workers
        self.rank = rank
        self.world_size = world_size
        self._collate_args = dict(budget=budget, pad_token_id=pad_token_id, image_token_id=image_token_id,
                                  spatial_merge_size=spatial_merge_size, image_processor=image_processor,
                                  video_token_id=video_token_id, video_processor=video_processor)
        self.stats = stats or PackingStats(samples=len(samples))  # dataset-level counts
        self.last_efficiency = 0.0  # real tokens / budget of the last row returned
        self._lengths = [len(s) for s in samples]
        self._epoch, self._row = 0, 0
        self._plan_cache: tuple[int, list[list[int]]] | None = None
        self._fingerprint = _fingerprint(samples)
        # sources[i]: the index in `weights` of sample i's source. All weights 1 (the default): every
        # sample once per epoch, the plan exactly as without weights.
        self.weights = list(weights) if weights is not None else None
        self._by_source: list[list[int]] | None = None
        if self.weights is not None and any(w != 1 for w in self.weights):
            if sources is None or len(sources) != len(samples):
                raise ValueError("weights need the source index of every sample")
            self._by_source = [[] for _ in self.weights]
            for index, source in enumerate(sources):
                self._by_source[source].append(index)

    def rows_of_epoch(self, epoch: int) -> list[list[int]]:
        """Sample indices of every row of `epoch`, in stream order."""
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            drawn = self._epoch_samples(generator)
            order = [drawn[i] for i in torch.randperm(len(drawn), generator=generator).tolist()] if self.shuffle else drawn
            rows = [[order[i] for i in row] for row in plan_rows([self._lengths[i] for i in order], self.budget)]
            if self.shuffle:
                rows = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
            self._plan_cache = (epoch, rows)
        return self._plan_cache[1]

    def _epoch_samples(self, generator: torch.Generator) -> list[int]:
        """The sample indices of one epoch before its shuffle: every sample once, or per source its
        weight's whole copies and a fresh draw for the fraction (see the module docstring)."""
        if self._by_source is None:
            return list(range(len(self.samples)))
        drawn: list[int] = []
        for indices, weight in zip(self._by_source, self.weights):
            copies, fraction = int(weight), weight - int(weight)
            drawn += indices * copies
            extra = round(fraction * len(indices))
            if extra:
                drawn += sorted(indices[i] for i in torch.randperm(len(indices), generator=generator)[:extra].tolist())
        return drawn

    def epoch_stats(self, epoch: int = 0) -> PackingStats:
        """Packing counts of one epoch's plan (skipped/truncated/dropped counts are the dataset's)."""
        rows = self.rows_of_epoch(epoch)
        return PackingStats(samples=len(self.samples), skipped=self.stats.skipped, truncated=self.stats.truncated,
                            dropped=self.stats.dropped, rows=len(rows), real_tokens=sum(self._lengths[i] for row in rows for i in row),
                            budget_tokens=len(rows) * self.budget)

    def __iter__(self) -> Iterator[dict]:
        """The batches from the current position on: collated here (workers 0, `next(loader)`
        does the same), or by `workers` processes, prefetched (see the module docstring)."""
        if self.workers == 0:
            return self
        return _WorkerFedBatches(self)

    def __next__(self) -> dict:
        """This rank's row of the next step; the position advances by `world_size` rows."""
        return self.collate(self._take_row())

    def collate(self, sample_indices: list[int]) -> dict:
        """The batch of one row (see `collate_row`)."""
        return collate_row([self.samples[i] for i in sample_indices], **self._collate_args)

    def _take_row(self) -> list[int]:
        """The sample indices of this rank's next row; advances the position by `world_size` rows."""
        self._epoch, self._row, mine = _advance(self.rows_of_epoch, self._epoch, self._row, self.rank, self.world_size)
        self.last_efficiency = sum(self._lengths[i] for i in mine) / self.budget
        return mine

    def state_dict(self) -> dict[str, Any]:
        """The position (same on every rank) plus what it is only valid for."""
        return {"epoch": self._epoch, "row": self._row, "seed": self.seed, "world_size": self.world_size,
                "budget": self.budget, "num_samples": len(self.samples), "fingerprint": self._fingerprint,
                "weights": self.weights}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved position; refuses one saved for other data, seed or row length.

        A different world size is accepted: the position counts global rows, so the stream goes
        on where it stopped, only dealt out to a different number of ranks.
        """
        for key, mine in (("seed", self.seed), ("budget", self.budget), ("num_samples", len(self.samples)),
                          ("fingerprint", self._fingerprint), ("weights", self.weights)):
            if key in state and state[key] != mine:
                raise DataError(
                    f"cannot resume the data position: it was saved with {key}={state[key]!r} but this run has "
                    f"{mine!r}; the batches would not continue the saved run (resume with the same data and "
                    f"settings, or start a new run folder)"
                )
        epoch, row = int(state["epoch"]), int(state["row"])
        if not 0 <= row < len(self.rows_of_epoch(epoch)):
            raise DataError(f"data position row {row} is outside epoch {epoch}")
        self._epoch, self._row = epoch, row


def _advance(rows_of_epoch, epoch: int, row: int, rank: int, world_size: int) -> tuple[int, int, list[int]]:
    """(epoch, row) after one step of `world_size` global rows, and rank `rank`'s row of that step."""
    mine: list[int] = []
    for offset in range(world_size):
        rows = rows_of_epoch(epoch)
        if offset == rank:
            mine = rows[row]
        row += 1
        if row == len(rows):
            epoch, row = epoch + 1, 0
    return epoch, row, mine


class _RowsFrom(IterableDataset):
    """This rank's batches from a position, for DataLoader workers: worker k of n collates the
    rows k, k + n, ... and skips the others' (planning a row costs nothing next to collating it),
    so DataLoader, which takes one item from each worker in turn, yields them in stream order."""

    def __init__(self, loader: PackedBatchLoader, epoch: int, row: int):
        self.loader, self.epoch, self.row = loader, epoch, row

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        loader, epoch, row = self.loader, self.epoch, self.row
        for index in itertools.count():
            epoch, row, mine = _advance(loader.rows_of_epoch, epoch, row, loader.rank, loader.world_size)
            if index % workers == worker:
                yield loader.collate(mine)


class _WorkerFedBatches:
    """Iterator over a loader's batches collated by its worker processes; keeps the loader's
    position at the rows handed out (what a checkpoint must save), not at those prefetched."""

    def __init__(self, loader: PackedBatchLoader):
        self.loader = loader
        self.batches = iter(DataLoader(
            _RowsFrom(loader, loader._epoch, loader._row), batch_size=None, num_workers=loader.workers,
            pin_memory=torch.cuda.is_available(), prefetch_factor=PREFETCH_ROWS_PER_WORKER,
        ))

    def __iter__(self) -> "_WorkerFedBatches":
        return self

    def __next__(self) -> dict:
        self.loader._take_row()  # the position (and last_efficiency) of the row the workers made
        return next(self.batches)


PREFETCH_ROWS_PER_WORKER = 2  # rows each worker collates ahead (DataLoader's default)


def build_loader(spec: Any, *, rank: int = 0, world_size: int = 1, base_dir: Path | None = None,
                 tokenizer: Tokenizer | None = None, progress: Callable[[str], None] | None = None) -> PackedBatchLoader:
    """The loader of a loaded `Spec`: reads `spec.data`, `spec.train` (tokens_per_step, seed) and
    `spec.model` (tokens, vision, text.vocab_size). Data paths are relative to the spec file
    (`spec.source`; the working directory for a spec built in memory) unless `base_dir` is given."""
    if base_dir is None:
        base_dir = data_base_dir(spec)
    model = spec.model
    return build_loader_from_sections(
        spec.data, base_dir=Path(base_dir), tokens_per_step=int(spec.train["tokens_per_step"]),
        seed=int(spec.train["seed"]), tokens=model["tokens"], vision=model.get("vision"),
        vocab_size=model["text"]["vocab_size"], rank=rank, world_size=world_size, tokenizer=tokenizer, progress=progress,
    )


def data_base_dir(spec: Any) -> Path:
    """The folder a spec's data paths are relative to: the spec file's, or the working directory
    for a spec built in memory."""
    return Path(spec.source).parent if getattr(spec, "source", None) is not None else Path.cwd()


def image_processor_for(vision: Mapping[str, Any] | None, settings: DataSettings) -> ImageProcessor | None:
    """The image preprocessing of `model.vision`'s patch sizes and `data.images`' pixel bounds; None
    for a text-only model."""
    if vision is None:
        return None
    return ImageProcessor(
        patch_size=vision["patch_size"], temporal_patch_size=vision["temporal_patch_size"],
        merge_size=vision["spatial_merge_size"], min_pixels=settings.images.min_pixels, max_pixels=settings.images.max_pixels,
    )


def video_processor_for(vision: Mapping[str, Any] | None, settings: DataSettings) -> VideoProcessor | None:
    """The video preprocessing of `model.vision`'s patch sizes and `data.videos`' sampling and pixel
    bounds; None for a text-only model."""
    if vision is None:
        return None
    videos = settings.videos
    return VideoProcessor(
        patch_size=vision["patch_size"], temporal_patch_size=vision["temporal_patch_size"],
        merge_size=vision["spatial_merge_size"], fps=videos.fps, min_frames=videos.min_frames,
        max_frames=videos.max_frames, min_pixels=videos.min_pixels, max_pixels=videos.max_pixels,
    )


def build_loader_from_sections(
    data: Mapping[str, Any],
    *,
    base_dir: Path,
    tokens_per_step: int,
    seed: int,
    tokens: Mapping[str, int],
    vision: Mapping[str, Any] | None,
    vocab_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    tokenizer: Tokenizer | None = None,
    progress: Callable[[str], None] | None = None,
) -> PackedBatchLoader:
    """The loader a spec describes.

    data:            the spec's `data` section (sources, tokenizer, packing, loss_on, on_error, images, shuffle).
    base_dir:        the spec file's folder (source and tokenizer paths are relative to it).
    tokens_per_step: `train.tokens_per_step`, the row length.
    tokens:          `model.tokens`, checked against the tokenizer's special tokens.
    vision:          `model.vision` (patch sizes), or None for a text-only model.
    vocab_size:      `model.text.vocab_size`, checked to hold every tokenizer id.
    progress:        gets a line now and then while a large dataset is encoded (see `encode_sources`).
    """
    settings = DataSettings.of(data)  # missing settings: the schema's defaults
    max_length = settings.packing.length or tokens_per_step
    if max_length > tokens_per_step:
        raise DataError(
            f"data.packing.length {max_length} is larger than train.tokens_per_step {tokens_per_step}: "
            f"a document must fit one row; lower data.packing.length or raise train.tokens_per_step"
        )
    if settings.loss_on not in LOSS_ON:
        raise DataError(f"data.loss_on: {settings.loss_on!r} is not one of {', '.join(LOSS_ON)}")
    tokenizer = tokenizer or load_tokenizer(settings.tokenizer, base_dir=base_dir)
    check_tokenizer(tokenizer, tokens, vocab_size, has_vision=vision is not None)

    image_processor = image_processor_for(vision, settings)
    video_processor = video_processor_for(vision, settings)
    sources = [base_dir / source["path"] for source in settings.sources]
    weights = [float(source["weight"]) for source in settings.sources]
    check_distinct_sources(sources)
    encoded = encode_sources(sources, tokenizer, image_processor=image_processor, loss_on=settings.loss_on,
                             max_length=max_length, overlong=settings.packing.overlong, on_error=settings.on_error,
                             progress=progress, video_processor=video_processor)
    samples, stats = encoded.samples, encoded.stats
    if not sum(encoded.records):
        skipped = f" ({stats.skipped} lines skipped as malformed)" if stats.skipped else ""
        raise DataError(f"the dataset is empty: no usable records in {', '.join(map(str, sources)) or '(no sources listed)'}"
                        f"{skipped}; check data.sources")
    if not samples:
        raise DataError(
            f"the dataset is empty after encoding: {stats.dropped} samples dropped as longer than "
            f"data.packing.length {max_length} (or with no target left after truncation), {stats.skipped} bad "
            f"records skipped; use data.packing.overlong: truncate, a larger length, or fix the records"
        )
    return PackedBatchLoader(
        samples, budget=tokens_per_step, seed=seed, shuffle=settings.shuffle, rank=rank,
        world_size=world_size, pad_token_id=tokenizer.token_id(ENDOFTEXT), image_token_id=tokens["image"],
        spatial_merge_size=vision["spatial_merge_size"] if vision else 1, image_processor=image_processor,
        stats=stats, workers=settings.workers, sources=encoded.source_of, weights=weights,
        video_token_id=tokens.get("video"), video_processor=video_processor,
    )


@dataclass
class EncodedSources:
    """The samples of every data source, in source order, and where each came from.

    samples:   encoded documents, at most the packing length each.
    source_of: per sample, the index of its source (for `data.sources[].weight`).
    records:   per source, the records read (valid, before encoding).
    chats:     how many of all the records are chats (the rest are plain texts).
    stats:     truncated / dropped / skipped counts over all sources.
    """

    samples: list[EncodedSample]
    source_of: list[int]
    records: list[int]
    chats: int
    stats: PackingStats


def encode_sources(sources: list[Path], tokenizer: Tokenizer, *, image_processor: ImageProcessor | None, loss_on: str,
                   max_length: int, overlong: str, on_error: str = "raise", problems: list[str] | None = None,
                   progress: Callable[[str], None] | None = None,
                   video_processor: VideoProcessor | None = None) -> EncodedSources:
    """Read each source (a JSONL, Parquet or Arrow file, or a folder of them), then encode them in
    turn; `problems` as in `encode_records`, plus the lines skipped while reading. `progress` gets a
    line every PROGRESS_EVERY_S seconds of encoding (the slow part: tokenizing, reading image
    headers) with the records done and an ETA."""
    reads = [read_source(path, on_error=on_error) for path in sources]
    meter = _Progress(sum(len(read.records) for read in reads), progress)
    encoded = EncodedSources([], [], [], 0, PackingStats())
    for index, read in enumerate(reads):
        if problems is not None:
            problems += read.skipped
        samples, stats = encode_records(read.records, tokenizer, image_processor=image_processor, loss_on=loss_on,
                                        max_length=max_length, overlong=overlong, on_error=on_error, problems=problems,
                                        on_record=meter.tick, video_processor=video_processor)
        encoded.samples += samples
        encoded.source_of += [index] * len(samples)
        encoded.records.append(len(read.records))
        encoded.chats += sum(isinstance(record, ChatRecord) for record in read.records)
        encoded.stats.truncated += stats.truncated
        encoded.stats.dropped += stats.dropped
        encoded.stats.skipped += stats.skipped + len(read.skipped)
    meter.done()
    encoded.stats.samples = len(encoded.samples)
    return encoded


PROGRESS_EVERY_S = 5.0  # how often a long encoding reports


class _Progress:
    """'data: encoded N of M records (R/s), ETA …' lines while encoding takes longer than PROGRESS_EVERY_S."""

    def __init__(self, total: int, report: Callable[[str], None] | None):
        self.total, self.report, self.count = total, report, 0
        self.start = self.last = time.monotonic()

    def tick(self) -> None:
        self.count += 1
        if self.report is None or self.count % 256:  # the clock is read every 256 records only
            return
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            rate = self.count / (now - self.start)
            eta = format_duration((self.total - self.count) / rate) if rate else "?"
            self.report(f"data: encoded {self.count:,} of {self.total:,} records ({rate:,.0f}/s), ETA {eta}")

    def done(self) -> None:
        elapsed = time.monotonic() - self.start
        if self.report is not None and elapsed >= PROGRESS_EVERY_S:
            self.report(f"data: encoded {self.count:,} records in {format_duration(elapsed)}")


def check_distinct_sources(sources: list[Path]) -> None:
    """A file listed twice would be read twice and its weight be ambiguous: refuse it."""
    seen: dict[Path, int] = {}
    for index, path in enumerate(sources):
        resolved = path.resolve()
        if resolved in seen:
            raise DataError(f"data.sources[{index}]: {path} is also data.sources[{seen[resolved]}]; list each file once "
                            "and give it a weight (data.sources[].weight) to draw it more often")
        seen[resolved] = index


def encode_records(records, tokenizer: Tokenizer, *, image_processor: ImageProcessor | None, loss_on: str,
                   max_length: int, overlong: str, on_error: str = "raise", problems: list[str] | None = None,
                   on_record: Callable[[], None] | None = None,
                   video_processor: VideoProcessor | None = None) -> tuple[list[EncodedSample], PackingStats]:
    """Records -> samples of at most `max_length` tokens, with counts of truncated/dropped/skipped.

    problems: when given, one "file:line: what" message is appended per record skipped as bad or
    dropped as overlong (`assemble data` lists them)."""
    stats = PackingStats()
    vision_start, vision_end = tokenizer.token_id(VISION_START), tokenizer.token_id(VISION_END)
    samples = []
    for record in records:
        if on_record is not None:
            on_record()
        try:
            if isinstance(record, ChatRecord):
                if record.images and image_processor is None:
                    raise DataError(f"{record.source}: the record has images but the spec's model has no vision tower")
                if record.videos and video_processor is None:
                    raise DataError(f"{record.source}: the record has videos but the spec's model has no vision tower")
                sample = encode_chat(
                    record, tokenizer, loss_on=loss_on,
                    image_grid=image_processor.grid_thw if image_processor else None,
                    image_tokens=image_processor.num_tokens if image_processor else None,
                    video_layout=video_processor.layout if video_processor else None,
                    video_frame_tokens=video_processor.frame_tokens if video_processor else None,
                )
            else:
                sample = encode_text(record, tokenizer)
        except DataError as error:
            if on_error == "raise":
                raise
            stats.skipped += 1
            if problems is not None:
                message = str(error)
                problems.append(message if message.startswith(record.source) else f"{record.source}: {message}")
            continue
        fitted = fit_to_budget(sample, max_length, overlong=overlong, vision_start_id=vision_start, vision_end_id=vision_end)
        if fitted is None:
            stats.dropped += 1
            if problems is not None:
                why = "" if overlong == "drop" else ", and truncated to it no target is left"
                problems.append(f"{record.source}: dropped: {len(sample)} tokens, longer than data.packing.length {max_length}{why}")
            continue
        stats.truncated += fitted is not sample
        samples.append(fitted)
    stats.samples = len(samples)
    return samples, stats


def check_tokenizer(tokenizer: Tokenizer, tokens: Mapping[str, int], vocab_size: int | None, *, has_vision: bool = True) -> None:
    """The spec's `model.tokens` ids must be the tokenizer's (the vision ones only for a model with
    a vision tower, the only one that reads them); every id must fit the embedding."""
    for key, name in SPEC_TOKEN_NAMES.items():
        if not has_vision and key in VISION_TOKEN_KEYS:
            continue
        if key in tokens and tokenizer.token_id(name) != tokens[key]:
            raise DataError(
                f"model.tokens.{key} is {tokens[key]} but tokenizer {tokenizer.name} has {name} = "
                f"{tokenizer.token_id(name)}; set model.tokens.{key} to the tokenizer's id or use the matching tokenizer"
            )
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise DataError(
            f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens but model.text.vocab_size is {vocab_size}"
        )


def _fingerprint(samples: list[EncodedSample]) -> str:
    """A short hash of the encoded data, so a resume onto different data is refused."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(array("l", sample.input_ids + [-1] + sample.labels).tobytes())
    return digest.hexdigest()[:16]
