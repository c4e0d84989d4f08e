"""`assemble data SPEC`: what the spec's data pipeline makes of its sources, without a model.

The same reading, encoding and packing the loader does (its windows, streamed), run with every bad
record skipped and listed rather than stopping at the first, so a user fixes them all in one pass. Reported: records per source, samples (chats, plain texts), the token-length
histogram, images and videos per sample, epoch 0's packing (rows, efficiency), and every record skipped as
bad or dropped as overlong with its file and line.
"""

from __future__ import annotations

import dataclasses
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from assembler.data.chat_template import ENDOFTEXT
from assembler.data.encoding import Progress
from assembler.data.loader import PackedBatchLoader, check_tokenizer, data_base_dir, streamed_sources
from assembler.data.records import DataError
from assembler.data.tokenizer import load_tokenizer


@dataclass
class DataReport:
    """The figures of one spec's data; `describe()` is what `assemble data` prints."""

    records_per_source: dict[str, int]
    weight_per_source: dict[str, float]  # data.sources[].weight: draws per epoch (see the loader)
    samples: int
    chats: int  # records read (valid JSON of a known shape), by kind
    texts: int
    truncated: int
    row_tokens: int  # train.tokens_per_step
    max_length: int  # data.packing.length (or the row length)
    lengths: Sequence[int]  # tokens per sample
    images_per_sample: Counter
    rows: int
    efficiency: float
    problems: list[str] = field(default_factory=list)  # "file:line: what", skipped or dropped records
    on_error: str = "raise"
    seconds: float = 0.0
    videos_per_sample: Counter = field(default_factory=Counter)
    skipped: int = 0  # bad records (invalid JSON, a broken image, ...), not overlong ones dropped

    def training_stops(self) -> str | None:
        """Why `assemble train` would stop on this data (bad records under `data.on_error: raise`,
        no sample at all), or None when it would train."""
        if self.skipped and self.on_error == "raise":
            return (f"{_count(self.skipped, 'bad record')} above, and data.on_error is raise: assemble train stops at the first; "
                    "fix them, or set data.on_error: skip to train without them")
        if not self.samples:
            return "no samples: every record was skipped or dropped, so assemble train has nothing to train on"
        return None

    def length_histogram(self) -> list[tuple[int, int, int]]:
        """(low, high, count) over power-of-two token-length bins up to max_length, empty bins left out."""
        bins: Counter = Counter()
        for length in self.lengths:
            bins[max(length - 1, 0).bit_length()] += 1  # bin b holds lengths in (2^(b-1), 2^b]
        return [(1 if b == 0 else 2 ** (b - 1) + 1, 2**b, bins[b]) for b in sorted(bins)]

    def describe(self) -> str:
        lines = ["sources:"]
        lines += [f"  {path}: {_count(count, 'record')}" + (f", weight {self.weight_per_source[path]:g}" if self.weight_per_source[path] != 1 else "")
                  for path, count in self.records_per_source.items()]
        lines.append(f"records: {self.chats + self.texts} read ({_count(self.chats, 'chat')}, {_count(self.texts, 'plain text')})")
        lines.append(f"samples: {self.samples}, {sum(self.lengths):,} tokens, "
                     f"{self.truncated} truncated to data.packing.length {self.max_length}")
        if self.lengths:
            ordered = sorted(self.lengths)
            median, longest = ordered[len(ordered) // 2], ordered[-1]
            lines.append(f"tokens per sample: median {median:,}, longest {longest:,}")
            widest = max(count for _, _, count in self.length_histogram())
            for low, high, count in self.length_histogram():
                bar = "#" * max(1, round(40 * count / widest))
                lines.append(f"  {low:>7,}–{high:<7,} {count:>8,}  {bar}")
        images = ", ".join(f"{_count(n, 'image')}: {count}" for n, count in sorted(self.images_per_sample.items()))
        lines.append(f"images per sample: {images or '-'}")
        videos = ", ".join(f"{_count(n, 'video')}: {count}" for n, count in sorted(self.videos_per_sample.items()))
        lines.append(f"videos per sample: {videos or '-'}")
        lines.append(f"packing (epoch 0, each record once): {_count(self.rows, 'row')} of {self.row_tokens:,} tokens, "
                     f"efficiency {self.efficiency:.1%}")
        if self.problems:
            stops = " (data.on_error: raise — training stops at the first)" if self.on_error == "raise" else ""
            lines.append(f"{len(self.problems)} record(s) skipped or dropped{stops}:")
            lines += [f"  {problem}" for problem in self.problems]
        else:
            lines.append("no bad records")
        lines.append(f"read in {self.seconds:.1f} s")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "records_per_source": self.records_per_source, "weight_per_source": self.weight_per_source,
            "samples": self.samples, "chats": self.chats,
            "texts": self.texts, "truncated": self.truncated, "tokens": sum(self.lengths),
            "length_histogram": [{"low": lo, "high": hi, "count": n} for lo, hi, n in self.length_histogram()],
            "images_per_sample": {str(n): c for n, c in sorted(self.images_per_sample.items())},
            "videos_per_sample": {str(n): c for n, c in sorted(self.videos_per_sample.items())},
            "rows": self.rows, "row_tokens": self.row_tokens, "efficiency": self.efficiency, "problems": self.problems,
        }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def data_report(spec: Any, progress: Callable[[str], None] | None = None) -> DataReport:
    """The report of a loaded Spec's data (paths relative to the spec file, as the loader reads them);
    `progress` gets a line now and then while a large set is encoded.

    One streamed pass over epoch 0, window by window as training reads it, with every weight 1 (each
    record once, so every count is the files'), every bad record skipped and listed: the memory is
    one window's and the token lengths (4 bytes a sample)."""
    start = time.monotonic()
    base_dir = data_base_dir(spec)
    settings, model = spec.settings.data, spec.settings.model
    row_tokens = spec.settings.train.tokens_per_step
    max_length = settings.packing.length or row_tokens
    vision = model.vision
    tokenizer = load_tokenizer(settings.tokenizer, base_dir=base_dir)
    check_tokenizer(tokenizer, dataclasses.asdict(model.tokens), model.text.vocab_size, has_vision=vision is not None)

    problems: list[str] = []
    once = dataclasses.replace(settings, sources=[{**source, "weight": 1} for source in settings.sources])
    windows = streamed_sources(once, base_dir, tokenizer, vision, max_length,
                               on_error="skip", problems=problems)
    loader = PackedBatchLoader(windows, budget=row_tokens, seed=spec.settings.train.seed, shuffle=settings.shuffle,
                               pad_token_id=tokenizer.token_id(ENDOFTEXT), image_token_id=model.tokens.image,
                               spatial_merge_size=vision["spatial_merge_size"] if vision else 1)
    meter = Progress(sum(windows.records_per_source), progress)
    records, chats, truncated, rows, real_tokens, skipped = [0] * len(windows.paths), 0, 0, 0, 0, 0
    lengths, images, videos = array("I"), Counter(), Counter()
    for index in range(windows.windows_in_epoch(0)):
        plan = loader.plan(0, index)
        window = plan.window
        records = [a + b for a, b in zip(records, window.records)]
        chats += window.chats
        truncated += window.stats.truncated
        skipped += window.stats.skipped
        rows += len(plan.rows)
        real_tokens += sum(map(len, window.samples))
        lengths.extend(len(sample) for sample in window.samples)
        images.update(len(sample.images) for sample in window.samples)
        videos.update(len(sample.videos) for sample in window.samples)
        meter.advance(sum(window.records) + len(window.skipped))
    meter.done()
    paths = [str(path) for path in windows.paths]
    if not sum(records) and not problems:
        raise DataError(f"the dataset is empty: no records in {', '.join(paths) or '(no sources listed)'}")
    return DataReport(
        records_per_source=dict(zip(paths, records)),
        weight_per_source={path: float(source["weight"]) for path, source in zip(paths, settings.sources)},
        samples=len(lengths), chats=chats, texts=sum(records) - chats, truncated=truncated, row_tokens=row_tokens,
        max_length=max_length, lengths=lengths, images_per_sample=images, rows=rows,
        efficiency=real_tokens / (rows * row_tokens) if rows else 0.0, problems=problems, on_error=settings.on_error,
        seconds=time.monotonic() - start, videos_per_sample=videos, skipped=skipped,
    )
