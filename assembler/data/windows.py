"""Where the loader's samples come from: a window of them at a time.

The loader (loader.py) plans rows one window at a time: it asks a `SampleWindows` for the samples
of window w of epoch e, shuffles and packs them, and forgets them when the window is used up. So
what the loader holds is one window, never the data set.

`StreamedSources`, what `assemble train` uses: the spec's `data.sources`, read as they are needed.
Epoch e is a list of chunks (chunks.py): every chunk of a source of weight w floor(w) times, and,
when w has a fraction, once more with round(frac(w)·n) of its n records drawn anew each epoch;
the list is permuted by a generator seeded with `seed + e` (kept in file order with
`data.shuffle: false`), and cut into windows of
`window_chunks` consecutive chunks. A window's chunks are read and their records encoded when the
window is planned: its draws and its order are pure functions of (seed, epoch, window), so any
process plans any window alone, and a resume reads only the window it resumes in.

`InMemorySamples`: samples encoded beforehand (a program's own, the tests'), one window per epoch,
weighted per sample's source as the streamed ones are per chunk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from assembler.data.chat_template import EncodedSample
from assembler.data.chunks import RECORDS_PER_CHUNK, Chunk, file_fingerprint, index_source
from assembler.data.packing import PackingStats
from assembler.data.records import ChatRecord, DataError, ReadResult, Record


@dataclass
class WindowSamples:
    """The samples of one window, in drawn order (before the loader's shuffle).

    keys:    per sample, what names it in `PackedBatchLoader.rows_of_epoch` (an index into the
             in-memory samples, or the record's "file:line").
    stats:   truncated / dropped / skipped counts of the window's records.
    records: per source, the valid records the window read.
    chats:   how many of those records are chats (the rest are plain texts).
    skipped: "file:line: what" of each record read and skipped as bad (on_error "skip").
    """

    samples: list[EncodedSample]
    keys: list[Any]
    stats: PackingStats = field(default_factory=PackingStats)
    records: list[int] = field(default_factory=list)
    chats: int = 0
    skipped: list[str] = field(default_factory=list)


class SampleWindows(Protocol):
    def windows_in_epoch(self, epoch: int) -> int: ...
    def window(self, epoch: int, index: int, seed: int) -> WindowSamples: ...
    def fingerprint(self) -> str: ...  # what a saved data position is only valid for
    def describe(self) -> str: ...


def derived_seed(seed: int, *parts: object) -> int:
    """A seed for one purpose of one window (`derived_seed(seed, epoch, window, "plan")`): windows
    draw independently of each other and of how many were drawn before."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _fraction_draw(count: int, fraction: float, generator: torch.Generator) -> list[int]:
    """round(fraction·count) of range(count), drawn by `generator`, in their original order."""
    extra = round(fraction * count)
    return sorted(torch.randperm(count, generator=generator)[:extra].tolist()) if extra else []


class InMemorySamples:
    """Encoded samples, one window per epoch (see the module docstring).

    sources: per sample, the index in `weights` of its source (needed when a weight is not 1).
    """

    def __init__(self, samples: list[EncodedSample], sources: list[int] | None = None, weights: list[float] | None = None):
        if not samples:
            raise DataError("the dataset is empty: no samples left to train on")
        self.samples = samples
        self.weights = list(weights) if weights is not None else None
        self._by_source: list[list[int]] | None = None
        if self.weights is not None and any(w != 1 for w in self.weights):
            if sources is None or len(sources) != len(samples):
                raise ValueError("weights need the source index of every sample")
            self._by_source = [[] for _ in self.weights]
            for index, source in enumerate(sources):
                self._by_source[source].append(index)

    def windows_in_epoch(self, epoch: int) -> int:
        return 1

    def window(self, epoch: int, index: int, seed: int) -> WindowSamples:
        drawn = list(range(len(self.samples)))
        if self._by_source is not None:
            generator = torch.Generator().manual_seed(derived_seed(seed, epoch, index, "draw"))
            drawn = []
            for indices, weight in zip(self._by_source, self.weights):
                drawn += indices * int(weight)
                drawn += [indices[i] for i in _fraction_draw(len(indices), weight - int(weight), generator)]
        return WindowSamples([self.samples[i] for i in drawn], drawn, PackingStats(samples=len(drawn)))

    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps(self.weights).encode())
        for sample in self.samples:
            digest.update(json.dumps([sample.input_ids, sample.labels]).encode())
        return digest.hexdigest()[:16]

    def describe(self) -> str:
        return f"{len(self.samples):,} samples in memory"


Encode = Callable[[list[Record], list[str] | None], tuple[list[EncodedSample], PackingStats]]


class StreamedSources:
    """The spec's data sources, streamed a window at a time (see the module docstring).

    paths:          one per `data.sources` entry (a file or a folder of data files).
    weights:        `data.sources[].weight`, one per path.
    encode:         records (and a list for problem messages, or None) -> samples and their counts.
    window_records: `data.packing.window`, rounded up to whole chunks.
    settings_key:   what else the samples depend on (tokenizer, loss_on, lengths), for the fingerprint.
    problems:       when given, every record skipped or dropped is described here ("file:line: what").
    shuffle:        `data.shuffle`: permute the chunks of each epoch (else file order).
    """

    def __init__(self, paths: Sequence[Path], weights: Sequence[float], *, encode: Encode, on_error: str,
                 window_records: int, settings_key: str = "", problems: list[str] | None = None, shuffle: bool = True):
        self.paths, self.weights = [Path(p) for p in paths], [float(w) for w in weights]
        self.encode, self.on_error, self.problems, self.shuffle = encode, on_error, problems, shuffle
        self.chunks: list[list[Chunk]] = [index_source(path, source) for source, path in enumerate(self.paths)]
        self.records_per_source = [sum(chunk.count for chunk in chunks) for chunks in self.chunks]  # lines: blank ones too
        self.window_chunks = max(1, -(-window_records // RECORDS_PER_CHUNK))
        self.window_records = self.window_chunks * RECORDS_PER_CHUNK
        files = sorted({chunk.file for chunks in self.chunks for chunk in chunks})
        self._fingerprint = hashlib.sha256(json.dumps(
            [[file.name, file_fingerprint(file)] for file in files] + [self.weights, self.window_chunks, RECORDS_PER_CHUNK, settings_key]
        ).encode()).hexdigest()[:16]
        self._epoch_order: tuple[int, int, list[tuple[Chunk, float]]] | None = None  # (seed, epoch, order)

    def epoch_chunks(self, epoch: int, seed: int) -> list[tuple[Chunk, float]]:
        """(chunk, share of its records drawn: 1 or a weight's fraction) in epoch order."""
        if self._epoch_order is None or self._epoch_order[:2] != (seed, epoch):
            entries: list[tuple[Chunk, float]] = []
            for chunks, weight in zip(self.chunks, self.weights):
                copies, fraction = int(weight), weight - int(weight)
                entries += [(chunk, 1.0) for chunk in chunks] * copies
                entries += [(chunk, fraction) for chunk in chunks] if fraction else []
            generator = torch.Generator().manual_seed(seed + epoch)
            order = [entries[i] for i in torch.randperm(len(entries), generator=generator).tolist()] if self.shuffle else entries
            self._epoch_order = (seed, epoch, order)
        return self._epoch_order[2]

    def windows_in_epoch(self, epoch: int) -> int:
        entries = sum(len(chunks) * (int(w) + (w != int(w))) for chunks, w in zip(self.chunks, self.weights))
        return -(-entries // self.window_chunks)

    def window(self, epoch: int, index: int, seed: int) -> WindowSamples:
        entries = self.epoch_chunks(epoch, seed)[index * self.window_chunks:(index + 1) * self.window_chunks]
        generator = torch.Generator().manual_seed(derived_seed(seed, epoch, index, "draw"))
        window = WindowSamples([], [], records=[0] * len(self.paths))
        for chunk, share in entries:
            read = chunk.read(on_error=self.on_error, into=ReadResult())
            records = read.records
            if share != 1:
                records = [records[i] for i in _fraction_draw(len(records), share, generator)]
            if self.problems is not None:
                self.problems += read.skipped
            samples, stats = self.encode(records, self.problems)
            window.samples += samples
            window.keys += [sample.source for sample in samples]
            window.records[chunk.source] += len(records)
            window.chats += sum(isinstance(record, ChatRecord) for record in records)
            window.skipped += read.skipped
            window.stats.truncated += stats.truncated
            window.stats.dropped += stats.dropped
            window.stats.skipped += stats.skipped + len(read.skipped)
        window.stats.samples = len(window.samples)
        return window

    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> str:
        chunks = sum(len(c) for c in self.chunks)
        sources = ", ".join(map(str, self.paths[:3])) + (f" and {len(self.paths) - 3} more sources" if len(self.paths) > 3 else "")
        records = sum(self.records_per_source)
        return (f"streaming {records:,} record{'' if records == 1 else 's'} ({chunks:,} chunk{'' if chunks == 1 else 's'}) from {sources}, "
                f"packed in windows of {self.window_records:,} records")
