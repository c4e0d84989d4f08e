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
  text parts as is, no separators) and then stripped of surrounding whitespace (Jinja `trim`);
- reasoning is the message's `reasoning_content`, or the text before `</think>` in its content
  (then removed from the content); stripped. A non-thinking answer thus gets the empty block
  `<think>\\n\\n</think>\\n\\n` — but only in the assistant turns after the last user message:
  the template renders earlier (history) turns without any think block;
- no generation prompt and no `<|endoftext|>` after a chat (the template adds neither).

Tokens: the template's output text is tokenized; each `<|image_pad|>` is then repeated once per
merged image patch (as Qwen's processor expands it).

Loss (`loss_on`): `assistant` (default) trains the assistant turns' tokens after
`<|im_start|>assistant\\n`, i.e. the think block, the answer and `<|im_end|>` (not the `\\n` after
it); `all` trains every token. Plain `{"text": ...}` records: every token, with `<|endoftext|>`
appended. `<|image_pad|>` tokens are never targets (they are replaced by image features).

Labels are already aligned as next-token targets: `labels[t]` is the target of position t, i.e.
`input_ids[t + 1]` when that token is trained, else -100; the last token of every document is
-100, so no target ever crosses a document boundary. (The model takes them as `shift_labels`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from assembler.data.records import ChatRecord, DataError, ImagePart, Message, TextRecord
from assembler.data.tokenizer import Tokenizer
from blocks.constants import IGNORE_INDEX  # re-exported by assembler.data

LOSS_ON = ("assistant", "all")
CHAT_TEMPLATE_FILE = Path(__file__).with_name("qwen3_5_chat_template.jinja")

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK_START, THINK_END = "<think>", "</think>"
VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
ENDOFTEXT = "<|endoftext|>"


@dataclass
class EncodedSample:
    """One document, ready to pack.

    input_ids:   [T] token ids.
    labels:      [T] next-token targets aligned with input_ids (-100: no loss); labels[-1] = -100.
    images:      image files in order of appearance.
    image_grids: (t, h, w) patch grid of each image; image i owns t·h·w / merge² `<|image_pad|>`.
    source:      "file:line" of the record.
    """

    input_ids: list[int]
    labels: list[int]
    images: list[Path]
    image_grids: list[tuple[int, int, int]]
    source: str

    def __len__(self) -> int:
        return len(self.input_ids)


class Markup(str):
    """Text the template itself writes (`<|im_start|>user\\n`): its special-token strings are
    special tokens. Every other piece of text is the user's, tokenized as plain text."""


# A rendered chat: (piece, trained) in order; a piece is markup, the user's text or an image.
Segment = tuple[str | ImagePart, bool]


def render_chat(messages: tuple[Message, ...] | list[Message]) -> str:
    """The template's text for a chat (one `<|image_pad|>` per image, before expansion)."""
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
) -> EncodedSample:
    """Tokenize a chat; `image_grid(path)` gives an image's patch grid, `image_tokens(grid)` its
    number of `<|image_pad|>` tokens."""
    _check_loss_on(loss_on)
    try:
        segments = chat_segments(record.messages)
    except DataError as error:
        raise DataError(f"{record.source}: {error}") from None
    vision_start, image_pad, vision_end = (tokenizer.token_id(t) for t in (VISION_START, IMAGE_PAD, VISION_END))
    ids: list[int] = []
    trained: list[bool] = []
    images, grids = [], []
    for piece, is_answer in segments:
        if isinstance(piece, ImagePart):
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
    trained = [t and i != image_pad for t, i in zip(trained, ids)]
    if not any(trained[1:]):
        raise DataError(f"{record.source}: nothing to train on (no assistant answer, and data.loss_on is 'assistant')")
    return EncodedSample(ids, next_token_labels(ids, trained), images, grids, record.source)


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


def _text(piece: str | ImagePart) -> str:
    return f"{VISION_START}{IMAGE_PAD}{VISION_END}" if isinstance(piece, ImagePart) else piece


def _trim(content: list[str | ImagePart]) -> list[str | ImagePart]:
    """Merge adjacent text parts and strip whitespace at both ends of the whole content."""
    merged: list[str | ImagePart] = []
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


def _split_reasoning(content: list[str | ImagePart], reasoning: str | None) -> tuple[list[str | ImagePart], str]:
    """(content without the think block, reasoning), as the template splits them; both stripped."""
    if reasoning is None:
        reasoning = ""
        text = "".join(p for p in content if isinstance(p, str))
        if THINK_END in text and not any(isinstance(p, ImagePart) for p in content):
            pieces = text.split(THINK_END)
            reasoning = pieces[0].rstrip("\n").split(THINK_START)[-1].lstrip("\n")
            answer = pieces[-1].lstrip("\n")
            content = [answer] if answer else []
    return content, reasoning.strip()
