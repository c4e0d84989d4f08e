"""`assemble data SPEC`: what the spec's data pipeline makes of its sources, without a model.

The same reading, encoding and packing the loader does (`build_loader_from_sections`' steps), run
with every bad record skipped and listed rather than stopping at the first, so a user fixes them
all in one pass. Reported: records per source, samples (chats, plain texts), the token-length
histogram, images and videos per sample, epoch 0's packing (rows, efficiency), and every record skipped as
bad or dropped as overlong with its file and line.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from assembler.data.chat_template import ENDOFTEXT
from assembler.data.loader import (
    PackedBatchLoader, check_distinct_sources, check_tokenizer, data_base_dir, encode_sources, image_processor_for,
    video_processor_for,
)
from assembler.data.records import DataError
from assembler.data.tokenizer import load_tokenizer
from assembler.spec_sections import DataSettings


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
    lengths: list[int]  # tokens per sample
    images_per_sample: Counter
    rows: int
    efficiency: float
    problems: list[str] = field(default_factory=list)  # "file:line: what", skipped or dropped records
    on_error: str = "raise"
    seconds: float = 0.0
    videos_per_sample: Counter = field(default_factory=Counter)

    def length_histogram(self) -> list[tuple[int, int, int]]:
        """(low, high, count) over power-of-two token-length bins up to max_length, empty bins left out."""
        bins: Counter = Counter()
        for length in self.lengths:
            bins[max(length - 1, 0).bit_length()] += 1  # bin b holds lengths in (2^(b-1), 2^b]
        return [(1 if b == 0 else 2 ** (b - 1) + 1, 2**b, bins[b]) for b in sorted(bins)]

    def describe(self) -> str:
        lines = ["sources:"]
        lines += [f"  {path}: {count} records" + (f", weight {self.weight_per_source[path]:g}" if self.weight_per_source[path] != 1 else "")
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
        lines.append(f"packing (epoch 0): {_count(self.rows, 'row')} of {self.row_tokens:,} tokens, efficiency {self.efficiency:.1%}")
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
    `progress` gets a line now and then while a large set is encoded."""
    start = time.monotonic()
    base_dir = data_base_dir(spec)
    settings = DataSettings.of(spec.data)
    row_tokens = int(spec.train["tokens_per_step"])
    max_length = settings.packing.length or row_tokens
    vision, tokens = spec.model.get("vision"), spec.model["tokens"]
    tokenizer = load_tokenizer(settings.tokenizer, base_dir=base_dir)
    check_tokenizer(tokenizer, tokens, spec.model["text"]["vocab_size"], has_vision=vision is not None)
    image_processor = image_processor_for(vision, settings)
    video_processor = video_processor_for(vision, settings)

    paths = [base_dir / source["path"] for source in settings.sources]
    check_distinct_sources(paths)
    problems: list[str] = []
    encoded = encode_sources(  # every bad record skipped and listed, not only the first
        paths, tokenizer, image_processor=image_processor, loss_on=settings.loss_on, max_length=max_length,
        overlong=settings.packing.overlong, on_error="skip", problems=problems, progress=progress,
        video_processor=video_processor,
    )
    samples, stats = encoded.samples, encoded.stats
    records_per_source = {str(path): count for path, count in zip(paths, encoded.records)}
    weight_per_source = {str(path): float(source["weight"]) for path, source in zip(paths, settings.sources)}
    rows, efficiency = 0, 0.0
    if not sum(encoded.records) and not problems:
        raise DataError(f"the dataset is empty: no records in {', '.join(records_per_source) or '(no sources listed)'}")
    if samples:
        loader = PackedBatchLoader(
            samples, budget=row_tokens, seed=int(spec.train["seed"]), shuffle=settings.shuffle,
            pad_token_id=tokenizer.token_id(ENDOFTEXT), image_token_id=tokens["image"],
            spatial_merge_size=vision["spatial_merge_size"] if vision else 1,
            sources=encoded.source_of, weights=list(weight_per_source.values()),
        )
        epoch = loader.epoch_stats(0)
        rows, efficiency = epoch.rows, epoch.efficiency
    return DataReport(
        records_per_source=records_per_source, weight_per_source=weight_per_source, samples=len(samples),
        chats=encoded.chats, texts=sum(encoded.records) - encoded.chats,
        truncated=stats.truncated, row_tokens=row_tokens, max_length=max_length,
        lengths=[len(sample) for sample in samples], images_per_sample=Counter(len(s.images) for s in samples),
        rows=rows, efficiency=efficiency, problems=problems, on_error=settings.on_error,
        seconds=time.monotonic() - start, videos_per_sample=Counter(len(s.videos) for s in samples),
    )
