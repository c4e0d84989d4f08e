"""Qwen3.5's chat template, and records -> token ids with next-token labels.

The rendering follows the `chat_template` of Qwen3.5's `tokenizer_config.json` (the Jinja template
on the Qwen/Qwen3.5-* model cards, without tools), rule for rule. CHAT_TEMPLATE_FILE, beside this
file, is the same format in Jinja for serving (HF exports without a source folder ship it);
tests/test_serving_files.py checks that transformers rendering it gives this module's text:

    [<|im_start|>system\\n{system}<|im_end|>\\n]
    <|im_start|>user\\n{user}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n                       (turns before the last user message)
    <|im_start|>assistant\\n<think>\\n{reasoning}\\n</think>\\n\\n{answer}<|im_end|>\\n   (turns after it)

- every message's content is rendered (an image part as `<|vision_start|><|image_pad|><|vision_end|>`,
  a video part as `<|vision_start|><|video_pad|><|vision_end|>`, text parts as is, no separators) and then stripped of surrounding whitespace (Jinja `trim`);
- reasoning is the message's `reasoning_content`, or the text before `</think>` in its content
  (then removed from the content); stripped. A non-thinking answer thus gets the empty block
  `<think>\\n\\n</think>\\n\\n` — but only in the assistant turns after the last user message:
  the template renders earlier (history) turns without any think block;
- no generation prompt and no `<|endoftext|>` after a chat (the template adds neither).

Tokens: the template's output text is tokenized; each `<|image_pad|>` is then repeated once per
merged image patch (as Qwen's processor expands it). Each `<|video_pad|>` becomes, per frame group
(temporal patch) of the video, its timestamp text and its own block, as transformers 5.x's
Qwen3VLProcessor expands it (only the inner `<|video_pad|>` is replaced, so the outer pair stays):

    <|vision_start|><0.2 seconds><|vision_start|><|video_pad|>×n<|vision_end|><1.2 seconds><|vision_start|>…<|vision_end|><|vision_end|>

n = h·w / merge² merged patches of one frame group; the timestamp is plain text.

Loss (`loss_on`): `assistant` (default) trains the assistant turns' tokens after
`<|im_start|>assistant\\n`, i.e. the think block, the answer and `<|im_end|>` (not the `\\n` after
it); `all` trains every token. Plain `{"text": ...}` records: every token, with `<|endoftext|>`
appended. `<|image_pad|>` and `<|video_pad|>` tokens are never targets (they are replaced by
vision features).

Labels are already aligned as next-token targets: `labels[t]` is the target of position t, i.e.
`input_ids[t + 1]` when that token is trained, else -100; the last token of every document is
-100, so no target ever crosses a document boundary. (The model takes them as `shift_labels`.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from assembler.data.records import ChatRecord, DataError, ImagePart, Message, TextRecord, VideoPart
from assembler.data.tokenizer import Tokenizer
from assembler.data.videos import VideoLayout, seconds_text
from blocks.constants import IGNORE_INDEX  # re-exported by assembler.data

LOSS_ON = ("assistant", "all")
CHAT_TEMPLATE_FILE = Path(__file__).with_name("qwen3_5_chat_template.jinja")

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK_START, THINK_END = "<think>", "</think>"
VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
VIDEO_PAD = "<|video_pad|>"
ENDOFTEXT = "<|endoftext|>"


@dataclass
class EncodedSample:
    """One document, ready to pack.

    input_ids:   [T] token ids.
    labels:      [T] next-token targets aligned with input_ids (-100: no loss); labels[-1] = -100.
    images:      image files in order of appearance.
    image_grids: (t, h, w) patch grid of each image; image i owns t·h·w / merge² `<|image_pad|>`.
    source:      "file:line" of the record.
    videos:      video files in order of appearance.
    video_grids: (t, h, w) patch grid of each video; t runs of h·w / merge² `<|video_pad|>` each.
    """

    input_ids: list[int]
    labels: list[int]
    images: list[Path]
    image_grids: list[tuple[int, int, int]]
    source: str
    videos: list[Path] = field(default_factory=list)
    video_grids: list[tuple[int, int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


class Markup(str):
    """Text the template itself writes (`<|im_start|>user\\n`): its special-token strings are
    special tokens. Every other piece of text is the user's, tokenized as plain text."""


# A rendered chat: (piece, trained) in order; a piece is markup, the user's text, an image or a video.
Segment = tuple[str | ImagePart | VideoPart, bool]


def render_chat(messages: tuple[Message, ...] | list[Message]) -> str:
    """The template's text for a chat (one `<|image_pad|>` per image, one `<|video_pad|>` per video, before expansion)."""
    return "".join(_text(piece) for piece, _ in chat_segments(messages))


def chat_segments(messages: tuple[Message, ...] | list[Message]) -> list[Segment]:
    """The chat rendered as template pieces, each marked trained (assistant answer) or not."""
    last_query = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last_query is None:
        raise DataError("a chat needs at least one user message (Qwen3.5's template requires one)")
    segments: list[Segment] = []
    for index, message in enumerate(messages):
        content = _trim(list(message.content))
        if message.role in ("system", "user"):
            segments.append((Markup(f"{IM_START}{message.role}\n"), False))
            segments += [(part, False) for part in content]
            segments.append((Markup(f"{IM_END}\n"), False))
            continue
        content, reasoning = _split_reasoning(content, message.reasoning_content)
        segments.append((Markup(f"{IM_START}assistant\n"), False))
        if index > last_query:  # split at the special tokens, so the reasoning stays plain text
            segments += [(Markup(THINK_START), True), (f"\n{reasoning}\n", True), (Markup(THINK_END), True),
                         (Markup("\n\n"), True)]
        segments += [(part, True) for part in content]
        segments.append((Markup(IM_END), True))
        segments.append((Markup("\n"), False))
    return segments


def encode_chat(
    record: ChatRecord,
    tokenizer: Tokenizer,
    *,
    image_grid: Callable[[Path], tuple[int, int, int]],
    image_tokens: Callable[[tuple[int, int, int]], int],
    loss_on: str = "assistant",
    video_layout: Callable[[Path], VideoLayout] | None = None,
    video_frame_tokens: Callable[[tuple[int, int, int]], int] | None = None,
) -> EncodedSample:
    """Tokenize a chat; `image_grid(path)` gives an image's patch grid, `image_tokens(grid)` its
    number of `<|image_pad|>` tokens; `video_layout(path)` a video's grid and frame timestamps,
    `video_frame_tokens(grid)` its `<|video_pad|>` tokens per frame group (videos.VideoProcessor)."""
    _check_loss_on(loss_on)
    try:
        segments = chat_segments(record.messages)
    except DataError as error:
        raise DataError(f"{record.source}: {error}") from None
    vision_start, image_pad, vision_end = (tokenizer.token_id(t) for t in (VISION_START, IMAGE_PAD, VISION_END))
    ids: list[int] = []
    trained: list[bool] = []
    images, grids, videos, video_grids = [], [], [], []
    for piece, is_answer in segments:
        if isinstance(piece, VideoPart):
            if video_layout is None:
                raise DataError(f"{record.source}: the record has a video but the spec's model has no vision tower")
            try:
                layout = video_layout(piece.path)
            except DataError as error:
                raise DataError(f"{record.source}: {error}") from None
            videos.append(piece.path)
            video_grids.append(layout.grid)
            piece_ids = video_token_ids(layout, video_frame_tokens(layout.grid), tokenizer)
        elif isinstance(piece, ImagePart):
            try:
                grid = image_grid(piece.path)
            except DataError as error:
                raise DataError(f"{record.source}: {error}") from None
            images.append(piece.path)
            grids.append(grid)
            piece_ids = [vision_start] + [image_pad] * image_tokens(grid) + [vision_end]
        elif isinstance(piece, Markup):
            piece_ids = tokenizer.encode_markup(piece)
        else:
            piece_ids = tokenizer.encode(piece)  # the user's text: special-token strings stay text
        ids += piece_ids
        trained += [is_answer or loss_on == "all"] * len(piece_ids)
    video_pad = tokenizer.token_id(VIDEO_PAD)
    trained = [t and i != image_pad and i != video_pad for t, i in zip(trained, ids)]
    if not any(trained[1:]):
        raise DataError(f"{record.source}: nothing to train on (no assistant answer, and data.loss_on is 'assistant')")
    return EncodedSample(ids, next_token_labels(ids, trained), images, grids, record.source, videos, video_grids)


def video_token_ids(layout: VideoLayout, frame_tokens: int, tokenizer: Tokenizer) -> list[int]:
    """A video's tokens: `<|vision_start|>`, per frame group its timestamp text and
    `<|vision_start|>` + `<|video_pad|>` × frame_tokens + `<|vision_end|>`, then `<|vision_end|>`
    (see the module docstring)."""
    vision_start, video_pad, vision_end = (tokenizer.token_id(t) for t in (VISION_START, VIDEO_PAD, VISION_END))
    ids = [vision_start]
    for seconds in layout.timestamps:
        ids += tokenizer.encode(seconds_text(seconds)) + [vision_start] + [video_pad] * frame_tokens + [vision_end]
    return ids + [vision_end]


def encode_text(record: TextRecord, tokenizer: Tokenizer) -> EncodedSample:
    """Plain text: every token trained, `<|endoftext|>` appended."""
    ids = tokenizer.encode(record.text) + [tokenizer.token_id(ENDOFTEXT)]
    return EncodedSample(ids, next_token_labels(ids, [True] * len(ids)), [], [], record.source)


def next_token_labels(input_ids: list[int], trained: list[bool]) -> list[int]:
    """labels[t] = input_ids[t + 1] if that token is trained else -100; the last label is -100."""
    labels = [tok if keep else IGNORE_INDEX for tok, keep in zip(input_ids[1:], trained[1:])]
    return labels + [IGNORE_INDEX]


def _check_loss_on(loss_on: str) -> None:
    if loss_on not in LOSS_ON:
        raise DataError(f"data.loss_on: {loss_on!r} is not one of {', '.join(LOSS_ON)}")


def _text(piece: str | ImagePart | VideoPart) -> str:
    if isinstance(piece, ImagePart):
        return f"{VISION_START}{IMAGE_PAD}{VISION_END}"
    if isinstance(piece, VideoPart):
        return f"{VISION_START}{VIDEO_PAD}{VISION_END}"
    return piece


def _trim(content: list[str | ImagePart | VideoPart]) -> list[str | ImagePart | VideoPart]:
    """Merge adjacent text parts and strip whitespace at both ends of the whole content."""
    merged: list[str | ImagePart | VideoPart] = []
    for part in content:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    if merged and isinstance(merged[0], str):
        merged[0] = merged[0].lstrip()
    if merged and isinstance(merged[-1], str):
        merged[-1] = merged[-1].rstrip()
    return [part for part in merged if not (isinstance(part, str) and not part)]


def _split_reasoning(content: list[str | ImagePart | VideoPart], reasoning: str | None) -> tuple[list[str | ImagePart | VideoPart], str]:
    """(content without the think block, reasoning), as the template splits them; both stripped."""
    if reasoning is None:
        reasoning = ""
        text = "".join(p for p in content if isinstance(p, str))
        if THINK_END in text and not any(isinstance(p, (ImagePart, VideoPart)) for p in content):
            pieces = text.split(THINK_END)
            reasoning = pieces[0].rstrip("\n").split(THINK_START)[-1].lstrip("\n")
            answer = pieces[-1].lstrip("\n")
            content = [answer] if answer else []
    return content, reasoning.strip()
