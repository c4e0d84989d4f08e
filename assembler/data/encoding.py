"""Records -> samples: each record rendered by the chat template, tokenized, its images measured,
and fitted to the packing length (truncated or dropped), with counts of what was not kept."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from assembler.data.chat_template import VISION_END, VISION_START, EncodedSample, encode_chat, encode_text
from assembler.data.images import ImageProcessor
from assembler.data.packing import PackingStats, fit_to_budget
from assembler.data.records import ChatRecord, DataError
from assembler.data.sources import read_source
from assembler.data.tokenizer import Tokenizer
from assembler.data.videos import VideoProcessor
from assembler.durations import format_duration


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
    meter = Progress(sum(len(read.records) for read in reads), progress)
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


class Progress:
    """'data: encoded N of M records (R/s), ETA …' lines while encoding takes longer than PROGRESS_EVERY_S."""

    def __init__(self, total: int, report: Callable[[str], None] | None):
        self.total, self.report, self.count, self.next_check = total, report, 0, 256
        self.start = self.last = time.monotonic()

    def tick(self) -> None:
        self.advance(1)

    def advance(self, records: int) -> None:
        self.count += records
        if self.report is None or self.count < self.next_check:  # the clock is read every 256 records only
            return
        self.next_check = self.count + 256
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            rate = self.count / (now - self.start)
            eta = format_duration(max(self.total - self.count, 0) / rate) if rate else "?"
            self.report(f"data: encoded {self.count:,} of {self.total:,} records ({rate:,.0f}/s), ETA {eta}")

    def done(self) -> None:
        elapsed = time.monotonic() - self.start
        if self.report is not None and elapsed >= PROGRESS_EVERY_S:
            self.report(f"data: encoded {self.count:,} records in {format_duration(elapsed)}")


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


@dataclass
class RecordEncoder:
    """`encode_records` with a spec's settings bound: records (and a list for problem messages, or
    None) -> samples and their counts. A plain object, so DataLoader workers can be sent it."""

    tokenizer: Tokenizer
    image_processor: ImageProcessor | None
    video_processor: VideoProcessor | None
    loss_on: str
    max_length: int
    overlong: str
    on_error: str

    def __call__(self, records: list, problems: list[str] | None = None) -> tuple[list[EncodedSample], PackingStats]:
        return encode_records(records, self.tokenizer, image_processor=self.image_processor, loss_on=self.loss_on,
                              max_length=self.max_length, overlong=self.overlong, on_error=self.on_error, problems=problems,
                              video_processor=self.video_processor)

    def settings_key(self) -> str:
        """What the samples depend on besides the records (not on_error: a run stopped by a bad
        record resumes with on_error skip onto the same stream)."""
        pixels = (self.image_processor.min_pixels, self.image_processor.max_pixels) if self.image_processor else None
        video = vars(self.video_processor) if self.video_processor else None
        return f"{self.tokenizer.name}|{self.loss_on}|{self.max_length}|{self.overlong}|{pixels}|{video}"
