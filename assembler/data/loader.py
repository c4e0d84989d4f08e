"""The batches the train loop consumes: an infinite, deterministic, resumable stream of packed rows.

The samples come a window at a time from a `SampleWindows` (windows.py: the spec's sources
streamed, or samples in memory). Window w of epoch e is planned alone: its samples shuffled by a
generator seeded from (seed, e, w), packed into rows by best-fit decreasing, and the rows shuffled
again by the same generator (so long documents do not all come first). The windows of the epochs,
one after another, form one global stream of rows; with `world_size` ranks, rank r takes global
rows r, r + W, r + 2W, ... — the plan is the same pure function of (data, seed) on every rank, so
no communication is needed (every rank reads and encodes every window; only collation is split).

The position is three integers, the same on every rank: `{"epoch", "window", "row"}` of the first
row of the next step. `state_dict()` / `load_state_dict()` carry it through a checkpoint, and a
resumed loader reads only the window it resumes in and yields exactly the batches the
uninterrupted one would have, on any world size.

With `workers` > 0 (`data.workers`), iterating the loader hands the stream to that many worker
processes (torch's DataLoader): each plans the windows itself (reading and tokenizing every record:
about a percent of a core at the H200's 13k tokens/s, per worker) and collates (decodes and
resizes the images of) this rank's rows k, k + workers, ...; DataLoader hands them back in order,
prefetched and pinned. A worker sends the position after its row with the row, so the position
counts the rows handed to the training loop, not those prefetched, and the batches are the same
for any number of workers. (Planning each window once and handing the plans to the collating
workers would save the repeated tokenizing, at a second pool; not needed at today's rates.)
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from assembler.data.chat_template import ENDOFTEXT, IMAGE_PAD, LOSS_ON, VISION_END, VISION_START, EncodedSample
from assembler.data.encoding import RecordEncoder
from assembler.data.images import ImageProcessor
from assembler.data.packing import PackingStats, collate_row, plan_rows
from assembler.data.records import DataError
from assembler.data.tokenizer import Tokenizer, load_tokenizer
from assembler.data.videos import VideoProcessor
from assembler.data.windows import InMemorySamples, SampleWindows, StreamedSources, WindowSamples, derived_seed
from assembler.spec.sections import DataSettings
from blocks.constants import VISION_TOKEN_KEYS
from blocks.vision_grid import position_grid_side

# The spec's model.tokens key -> the tokenizer's special token it must equal.
SPEC_TOKEN_NAMES = {"image": IMAGE_PAD, "video": "<|video_pad|>", "vision_start": VISION_START,
                    "vision_end": VISION_END, "eos": ENDOFTEXT}

Position = tuple[int, int, int]  # (epoch, window, row) of the next global row


@dataclass
class WindowPlan:
    """One window's rows: `rows[i]` lists indices into `window.samples`, in the row's order."""

    window: WindowSamples
    rows: list[list[int]]

    def stats(self, budget: int) -> PackingStats:
        stats = self.window.stats
        return PackingStats(samples=len(self.window.samples), skipped=stats.skipped, truncated=stats.truncated,
                            dropped=stats.dropped, rows=len(self.rows), real_tokens=sum(map(len, self.window.samples)),
                            budget_tokens=len(self.rows) * budget)


class PackedBatchLoader:
    """Iterable of batch dicts (see `collate_row`); infinite over epochs.

    windows: where the samples come from (windows.py), or a list of encoded samples (then held in
             memory, weighted by `sources` / `weights`). Every sample is at most `budget` tokens.
    """

    def __init__(
        self,
        windows: SampleWindows | list[EncodedSample],
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
        workers: int = 0,
        sources: list[int] | None = None,
        weights: list[float] | None = None,
        video_token_id: int | None = None,
        video_processor: VideoProcessor | None = None,
        num_grid_per_side: int | None = None,
    ):
        if isinstance(windows, list):
            windows = InMemorySamples(windows, sources, weights)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.windows = windows
        self.budget = budget
        self.seed = seed
        self.shuffle = shuffle
        self.workers = workers
        self.rank = rank
        self.world_size = world_size
        self._collate_args = dict(budget=budget, pad_token_id=pad_token_id, image_token_id=image_token_id,
                                  spatial_merge_size=spatial_merge_size, image_processor=image_processor,
                                  video_token_id=video_token_id, video_processor=video_processor,
                                  num_grid_per_side=num_grid_per_side)
        self.position: Position = (0, 0, 0)
        self._plan_cache: tuple[int, int, WindowPlan] | None = None

    @property
    def samples(self) -> list[EncodedSample]:
        """The in-memory samples (an in-memory loader only)."""
        return self.windows.samples  # type: ignore[attr-defined]

    def plan(self, epoch: int, window: int) -> WindowPlan:
        """The rows of window `window` of `epoch` (the last one planned is kept)."""
        if self._plan_cache is None or self._plan_cache[:2] != (epoch, window):
            samples = self.windows.window(epoch, window, self.seed)
            generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch, window, "plan"))
            count = len(samples.samples)
            order = torch.randperm(count, generator=generator).tolist() if self.shuffle else list(range(count))
            rows = [[order[i] for i in row] for row in plan_rows([len(samples.samples[i]) for i in order], self.budget)]
            if self.shuffle:
                rows = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
            self._plan_cache = (epoch, window, WindowPlan(samples, rows))
        return self._plan_cache[2]

    def rows_of_epoch(self, epoch: int) -> list[list[Any]]:
        """Every row of `epoch` in stream order, each the keys of its samples (windows.py)."""
        rows = []
        for window in range(self.windows.windows_in_epoch(epoch)):
            plan = self.plan(epoch, window)
            rows += [[plan.window.keys[i] for i in row] for row in plan.rows]
        return rows

    def samples_of_epoch(self, epoch: int = 0) -> list[EncodedSample]:
        """Every sample of `epoch` (weighted draws included), window by window (a pass over the data)."""
        return [sample for window in range(self.windows.windows_in_epoch(epoch)) for sample in self.plan(epoch, window).window.samples]

    def epoch_stats(self, epoch: int = 0) -> PackingStats:
        """Packing counts of a whole epoch (plans every window of it: a pass over the data)."""
        total = PackingStats()
        for window in range(self.windows.windows_in_epoch(epoch)):
            stats = self.plan(epoch, window).stats(self.budget)
            for name in ("samples", "skipped", "truncated", "dropped", "rows", "real_tokens", "budget_tokens"):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
        return total

    def describe(self) -> str:
        """The source and the window the position is in (planned here, once; so bad data in it, or
        no data at all, is an error now)."""
        epoch, window, _ = self.position
        self.advance(self.position)  # the position stays: this only plans (and raises)
        stats = self.plan(epoch, window).stats(self.budget)
        return f"{self.windows.describe()}; window {window} of epoch {epoch}: {stats.describe()}"

    def __iter__(self) -> Iterator[dict]:
        """The batches from the current position on: collated here (workers 0, `next(loader)`
        does the same), or by `workers` processes, prefetched (see the module docstring)."""
        if self.workers == 0:
            return self
        return _WorkerFedBatches(self)

    def __next__(self) -> dict:
        """This rank's row of the next step; the position advances by `world_size` rows."""
        self.position, mine = self.advance(self.position)
        return self.collate(mine)

    def collate(self, row: tuple[WindowPlan, list[int]]) -> dict:
        """The batch of one row (see `collate_row`)."""
        plan, indices = row
        return collate_row([plan.window.samples[i] for i in indices], **self._collate_args)

    def advance(self, position: Position) -> tuple[Position, tuple[WindowPlan, list[int]]]:
        """The position one step of `world_size` global rows after `position`, and this rank's row
        of that step. Windows without a row (every record bad or overlong) are passed over; an
        epoch without one is an error."""
        epoch, window, row = position
        mine: tuple[WindowPlan, list[int]] | None = None
        for offset in range(self.world_size):
            plan, empty = self.plan(epoch, window), 0
            while not plan.rows:
                empty += 1
                if empty >= self.windows.windows_in_epoch(epoch):
                    raise DataError(
                        f"the dataset is empty: {self.windows.describe()}, but no window of epoch {epoch} has a sample left to train on "
                        f"({plan.stats(self.budget).describe()} in the last); check data.sources, data.on_error and "
                        "data.packing (`assemble data SPEC` lists every bad record)")
                epoch, window = self._next_window(epoch, window)
                plan = self.plan(epoch, window)
            if offset == self.rank:
                mine = (plan, plan.rows[row])
            row += 1
            if row == len(plan.rows):
                (epoch, window), row = self._next_window(epoch, window), 0
        assert mine is not None
        return (epoch, window, row), mine

    def _next_window(self, epoch: int, window: int) -> tuple[int, int]:
        window += 1
        return (epoch + 1, 0) if window == self.windows.windows_in_epoch(epoch) else (epoch, window)

    def state_dict(self) -> dict[str, Any]:
        """The position (same on every rank) plus what it is only valid for."""
        epoch, window, row = self.position
        return {"epoch": epoch, "window": window, "row": row, "seed": self.seed, "world_size": self.world_size,
                "budget": self.budget, "data": self.windows.fingerprint()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved position; refuses one saved for other data, seed or row length.

        A different world size is accepted: the position counts global rows, so the stream goes
        on where it stopped, only dealt out to a different number of ranks.
        """
        if "window" not in state:
            raise DataError("cannot resume the data position: the checkpoint was written by the loader before "
                            "streaming (no window in its position); start a new run folder")
        for key, mine, what in (("seed", self.seed, "train.seed"), ("budget", self.budget, "train.tokens_per_step"),
                                ("data", self.windows.fingerprint(), "the data (its files, weights, window or encoding settings)")):
            if state.get(key) != mine:
                raise DataError(
                    f"cannot resume the data position: {what} differs from the saved run's ({key} {state.get(key)!r}, "
                    f"now {mine!r}); the batches would not continue the saved run (resume with the same data and "
                    f"settings; data.on_error may change), or start a new run folder"
                )
        epoch, window, row = int(state["epoch"]), int(state["window"]), int(state["row"])
        if not (0 <= window < self.windows.windows_in_epoch(epoch) and 0 <= row < max(len(self.plan(epoch, window).rows), 1)):
            raise DataError(f"data position (epoch {epoch}, window {window}, row {row}) is outside the data")
        self.position = (epoch, window, row)


class _RowsFrom(IterableDataset):
    """This rank's batches from a position, for DataLoader workers: worker k of n collates the
    rows k, k + n, ... and skips the others' (planning them costs little next to collating), so
    DataLoader, which takes one item from each worker in turn, yields them in stream order. Each
    item is (position after the row, batch), or ("error", message) for bad data met while planning."""

    def __init__(self, loader: PackedBatchLoader, position: Position):
        self.loader, self.position = loader, position

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        loader, position = self.loader, self.position
        for index in itertools.count():
            try:
                position, mine = loader.advance(position)
                if index % workers == worker:
                    yield position, loader.collate(mine)
            except DataError as error:  # sent as a message: DataLoader would wrap it in a traceback
                yield "error", str(error)
                return


class _WorkerFedBatches:
    """Iterator over a loader's batches collated by its worker processes; keeps the loader's
    position at the rows handed out (what a checkpoint must save), not at those prefetched."""

    def __init__(self, loader: PackedBatchLoader):
        self.loader = loader
        self.batches = iter(DataLoader(
            _RowsFrom(loader, loader.position), batch_size=None, num_workers=loader.workers,
            pin_memory=torch.cuda.is_available(), prefetch_factor=PREFETCH_ROWS_PER_WORKER,
        ))

    def __iter__(self) -> "_WorkerFedBatches":
        return self

    def __next__(self) -> dict:
        position, batch = next(self.batches)
        if position == "error":
            raise DataError(batch)
        self.loader.position = tuple(position)
        return batch


PREFETCH_ROWS_PER_WORKER = 2  # rows each worker collates ahead (DataLoader's default)


def build_loader(spec: Any, *, rank: int = 0, world_size: int = 1, base_dir: Path | None = None,
                 tokenizer: Tokenizer | None = None) -> PackedBatchLoader:
    """The loader of a loaded `Spec`: reads `spec.data`, `spec.train` (tokens_per_step, seed) and
    `spec.model` (tokens, vision, text.vocab_size). Data paths are relative to the spec file
    (`spec.source`; the working directory for a spec built in memory) unless `base_dir` is given."""
    if base_dir is None:
        base_dir = data_base_dir(spec)
    model, train = spec.settings.model, spec.settings.train
    return build_loader_from_sections(
        spec.settings.data, base_dir=Path(base_dir), tokens_per_step=train.tokens_per_step,
        seed=train.seed, tokens=dataclasses.asdict(model.tokens), vision=model.vision,
        vocab_size=model.text.vocab_size, rank=rank, world_size=world_size, tokenizer=tokenizer,
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
    data: Mapping[str, Any] | DataSettings,
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
) -> PackedBatchLoader:
    """The loader a spec describes.

    data:            the spec's `data` section (sources, tokenizer, packing, loss_on, on_error, images, shuffle).
    base_dir:        the spec file's folder (source and tokenizer paths are relative to it).
    tokens_per_step: `train.tokens_per_step`, the row length.
    tokens:          `model.tokens`, checked against the tokenizer's special tokens.
    vision:          `model.vision` (patch sizes), or None for a text-only model.
    vocab_size:      `model.text.vocab_size`, checked to hold every tokenizer id.
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

    windows = streamed_sources(settings, base_dir, tokenizer, vision, max_length)
    return PackedBatchLoader(
        windows, budget=tokens_per_step, seed=seed, shuffle=settings.shuffle, rank=rank,
        world_size=world_size, pad_token_id=tokenizer.token_id(ENDOFTEXT), image_token_id=tokens["image"],
        spatial_merge_size=vision["spatial_merge_size"] if vision else 1, image_processor=windows.encode.image_processor,
        workers=settings.workers, video_token_id=tokens.get("video"), video_processor=windows.encode.video_processor,
        num_grid_per_side=position_grid_side(vision["num_position_embeddings"]) if vision else None,
    )


def streamed_sources(settings: DataSettings, base_dir: Path, tokenizer: Tokenizer, vision: Mapping[str, Any] | None,
                     max_length: int, *, on_error: str | None = None, problems: list[str] | None = None) -> StreamedSources:
    """The `data.sources` of `settings` as windows of encoded samples, images and videos measured
    for `model.vision` (`on_error` overrides the spec's; `problems` collects every record skipped
    or dropped)."""
    paths = [base_dir / source["path"] for source in settings.sources]
    check_distinct_sources(paths)
    encoder = RecordEncoder(tokenizer, image_processor_for(vision, settings), video_processor_for(vision, settings), loss_on=settings.loss_on, max_length=max_length,
                            overlong=settings.packing.overlong, on_error=on_error or settings.on_error)
    windows = StreamedSources(paths, [float(source["weight"]) for source in settings.sources], encode=encoder,
                              on_error=encoder.on_error, window_records=settings.packing.window,
                              settings_key=encoder.settings_key(), problems=problems, shuffle=settings.shuffle)
    if not sum(windows.records_per_source):
        raise DataError(f"the dataset is empty: no records in {', '.join(map(str, paths)) or '(no sources listed)'}; "
                        "check data.sources")
    return windows


def check_distinct_sources(sources: list[Path]) -> None:
    """A file listed twice would be read twice and its weight be ambiguous: refuse it."""
    seen: dict[Path, int] = {}
    for index, path in enumerate(sources):
        resolved = path.resolve()
        if resolved in seen:
            raise DataError(f"data.sources[{index}]: {path} is also data.sources[{seen[resolved]}]; list each file once "
                            "and give it a weight (data.sources[].weight) to draw it more often")
        seen[resolved] = index


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
