"""Reading and validating JSONL training records.

Two record layouts, one JSON object per line (blank lines are ignored):

    {"messages": [{"role": "user", "content": [{"type": "image", "path": "img/0.png"},
                                               {"type": "text", "text": "Describe the image."}]},
                  {"role": "assistant", "content": "A red circle."}]}
    {"text": "Plain text, trained on every token."}

`content` is a string or a list of parts: `{"type": "text", "text": ...}`,
`{"type": "image", "path": ...}` or `{"type": "video", "path": ...}` (`"image"` / `"video"` are
accepted for `"path"`, as in Qwen's own examples). Image and video paths are relative to the JSONL
file. A video is any file PyAV (FFmpeg) decodes (mp4, mkv, webm, mov, ...); its frames are sampled
at `data.videos.fps` within [min_frames, max_frames] and resized within the pixel bounds of
`data.videos` (assembler/data/videos.py), and it enters the chat as Qwen3.5's processor writes it:
one `<t seconds>` timestamp and block of `<|video_pad|>` tokens per pair of frames:

    {"messages": [{"role": "user", "content": [{"type": "video", "path": "clips/0.mp4"},
                                               {"type": "text", "text": "What happens?"}]},
                  {"role": "assistant", "content": "A ball rolls to the left."}]}
 Roles: system (first message only), user, assistant;
an assistant message may carry `reasoning_content` (rendered inside `<think>`). Other top-level
keys (ids, metadata) are ignored.

A bad record raises `DataError` naming `file:line`, or, with `on_error="skip"`, is skipped and
counted in `ReadResult.skipped`.
"""

from __future__ import annotations

import json
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from assembler.spec.errors import UserError

ROLES = ("system", "user", "assistant")
ON_ERROR = ("raise", "skip")


class DataError(UserError):
    """A user error in the training data or its settings; the message says where and what to do
    (the CLI prints it and exits with 2, no traceback)."""


@dataclass(frozen=True)
class ImagePart:
    """An image inside a message; `path` is absolute (resolved against the JSONL's folder)."""

    path: Path


@dataclass(frozen=True)
class VideoPart:
    """A video inside a message; `path` is absolute (resolved against the JSONL's folder)."""

    path: Path


ContentPart = Union[str, ImagePart, VideoPart]


@dataclass(frozen=True)
class Message:
    role: str
    content: tuple[ContentPart, ...]  # text, images and videos in order
    reasoning_content: str | None = None


@dataclass(frozen=True)
class ChatRecord:
    messages: tuple[Message, ...]
    source: str  # "file:line", for error messages

    @property
    def images(self) -> list[Path]:
        return [part.path for m in self.messages for part in m.content if isinstance(part, ImagePart)]

    @property
    def videos(self) -> list[Path]:
        return [part.path for m in self.messages for part in m.content if isinstance(part, VideoPart)]


@dataclass(frozen=True)
class TextRecord:
    text: str
    source: str


Record = Union[ChatRecord, TextRecord]


@dataclass
class ReadResult:
    """records: the valid records in file order. skipped: one message per skipped line."""

    records: list[Record] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def read_jsonl(path: Path, *, on_error: str = "raise", into: ReadResult | None = None) -> ReadResult:
    """Read one JSONL file; see the module docstring for the layout."""
    result = into if into is not None else ReadResult()
    if not path.is_file():
        raise DataError(f"data source {path} does not exist; check data.sources (paths are relative to the spec file)")
    with path.open("rb") as lines:  # decoded line by line: a bad byte is that line's error, not a crash
        for number, raw in enumerate(lines, start=1):
            read_jsonl_line(raw, path=path, number=number, on_error=on_error, into=result)
    return result


def read_jsonl_line(raw: bytes, *, path: Path, number: int, on_error: str, into: ReadResult) -> None:
    """Line `number` (1-based) of JSONL file `path`: its record appended to `into.records`, nothing
    for a blank line, a bad one raised or (on_error "skip") its message appended to `into.skipped`."""
    source = f"{path}:{number}"
    try:
        line = _decode_line(raw, source)
        if line.strip():
            into.records.append(parse_record(line, source=source, base_dir=path.parent))
    except DataError as error:
        if on_error == "raise":
            raise DataError(f"{error} (set data.on_error: skip to skip bad records)") from None
        into.skipped.append(str(error))


def _decode_line(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{source}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1}); JSONL files are "
            "UTF-8: re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def parse_record(line: str, *, source: str, base_dir: Path) -> Record:
    """One JSONL line -> a validated record; `DataError` naming `source` otherwise."""
    line = line.rstrip("\r\n")  # a break at the line's end is at its last column, not "line 2, column 1"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{source}: not valid JSON ({error.msg} at column {error.pos + 1})") from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise DataError(f"{source}: JSON nested too deeply to read (a record is a few levels deep)") from None
    return parse_object(obj, source=source, base_dir=base_dir)


def parse_object(obj: object, *, source: str, base_dir: Path) -> Record:
    """One record's object (a JSONL line's, or a Parquet / Arrow row's) -> a validated record."""
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a JSON object with 'messages' or 'text', got {type(obj).__name__}")
    if ("messages" in obj) == ("text" in obj):
        raise DataError(f"{source}: a record needs exactly one of 'messages' (a chat) or 'text' (plain text)")
    if "text" in obj:
        if not isinstance(obj["text"], str) or not obj["text"].strip():
            raise DataError(f"{source}: 'text' must be a non-empty string")
        return TextRecord(text=obj["text"], source=source)
    return ChatRecord(messages=_parse_messages(obj["messages"], source, base_dir), source=source)


def _parse_messages(messages: object, source: str, base_dir: Path) -> tuple[Message, ...]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{source}: 'messages' must be a non-empty list of {{role, content}} objects")
    parsed = []
    for index, message in enumerate(messages):
        where = f"{source}: messages[{index}]"
        if not isinstance(message, dict) or "role" not in message:
            raise DataError(f"{where}: expected an object with 'role' and 'content'")
        role = message["role"]
        if role not in ROLES:
            raise DataError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if role == "system" and index != 0:
            raise DataError(f"{where}: a system message must be the first message")
        content = _parse_content(message.get("content"), where, base_dir)
        if role == "system" and any(isinstance(part, (ImagePart, VideoPart)) for part in content):
            raise DataError(f"{where}: a system message cannot contain images or videos")
        reasoning = message.get("reasoning_content")
        if reasoning is not None and (role != "assistant" or not isinstance(reasoning, str)):
            raise DataError(f"{where}: 'reasoning_content' must be a string on an assistant message")
        parsed.append(Message(role=role, content=content, reasoning_content=reasoning))
    if not any(m.role == "user" for m in parsed):
        raise DataError(f"{source}: a chat needs at least one user message (Qwen3.5's template requires one)")
    return tuple(parsed)


def _parse_content(content: object, where: str, base_dir: Path) -> tuple[ContentPart, ...]:
    if content is None:
        return ()
    if isinstance(content, str):
        return (content,)
    if not isinstance(content, list):
        raise DataError(f"{where}: 'content' must be a string or a list of parts, got {type(content).__name__}")
    parts: list[ContentPart] = []
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind in ("image", "video"):
            relative = part.get("path", part.get(kind))
            if not isinstance(relative, str) or not relative:
                raise DataError(f"{at}: {'an image' if kind == 'image' else 'a video'} part needs a 'path' (relative to the JSONL file)")
            path = _media_file(relative, kind, at, base_dir)
            parts.append(ImagePart(path=path) if kind == "image" else VideoPart(path=path))
        else:
            raise DataError(
                f"{at}: expected {{\"type\": \"text\", \"text\": ...}}, {{\"type\": \"image\", \"path\": ...}} or "
                f"{{\"type\": \"video\", \"path\": ...}}, got {shorten(part)}"
            )
    return tuple(parts)


def _media_file(relative: str, kind: str, at: str, base_dir: Path) -> Path:
    """The absolute path of an image or video part's existing file; DataError when there is none.
    The path is the data's, so anything the OS refuses in it (a NUL byte, a name past the file
    system's length limit) is that record's error."""
    try:
        path = (base_dir / relative).resolve()
        if path.is_file():
            return path
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise DataError(f"{at}: {kind} path {shorten(relative)} is not a usable file path ({reason})") from None
    raise DataError(f"{at}: {kind} {shorten(relative)} not found (looked for {path})")


def shorten(value: object) -> str:
    """`repr(value)` cut to a readable length and depth, for an error message about data."""
    return _SHORT_REPR.repr(value)


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 120
_SHORT_REPR.maxlevel = 4
