"""Records -> samples: each record rendered by the chat template, tokenized, its images measured,
and fitted to the packing length (truncated or dropped), with counts of what was not kept."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from assembler.data.chat_template import VISION_END, VISION_START, EncodedSample, encode_chat, encode_text
from assembler.data.images import ImageProcessor
from assembler.data.packing import PackingStats, fit_to_budget
from assembler.data.records import ChatRecord, DataError
from assembler.data.tokenizer import Tokenizer
from assembler.data.videos import VideoProcessor
from assembler.common.durations import format_duration


PROGRESS_EVERY_S = 5.0  # how often a long encoding reports


class Progress:
    """'data: encoded N of M records (R/s), ETA …' lines while encoding takes longer than PROGRESS_EVERY_S
    (`assemble data`'s pass over a set, `advance`d a window at a time)."""

    def __init__(self, total: int, report: Callable[[str], None] | None):
        self.total, self.report, self.count, self.next_check = total, report, 0, 256
        self.start = self.last = time.monotonic()

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
                   video_processor: VideoProcessor | None = None) -> tuple[list[EncodedSample], PackingStats]:
    """Records -> samples of at most `max_length` tokens, with counts of truncated/dropped/skipped.

    problems: when given, one "file:line: what" message is appended per record skipped as bad or
    dropped as overlong (`assemble data` lists them)."""
    stats = PackingStats()
    vision_start, vision_end = tokenizer.token_id(VISION_START), tokenizer.token_id(VISION_END)
    samples = []
    for record in records:
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
