"""Errors for people: what was wrong with a spec, where, and what to do.

A `SpecError` carries every problem found (not just the first), each located by file, line and
column when known, and by its JSON path inside the spec (`model.text.layers[7]`):

    specs/x.yaml: model.text.layer_typs: unknown key — did you mean 'layer_types'?
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence


USER_ERROR_EXIT_CODE = 2  # every command's exit code for an error the user can fix


class UserError(Exception):
    """An error the user can fix (bad input, missing file); the CLI prints it and exits with
    USER_ERROR_EXIT_CODE, no traceback."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec.

    path: JSON path inside the spec, "" for the whole document (`model.text.layers[7]`).
    message: what is wrong, naming the bad value (`'lnear' is not one of linear, full`).
    hint: what to do about it (`did you mean 'linear'?`), or "".
    value, expected: the offending value and a description of what was expected, for programs.
    file, line, column: where, when known (line and column 1-based).
    """

    path: str
    message: str
    hint: str = ""
    value: Any = None
    expected: str = ""
    file: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = [self.file] if self.file else []
        if self.line is not None:
            where.append(str(self.line))
            if self.column is not None:
                where.append(str(self.column))
        parts = [":".join(where)] if where else []
        if self.path:
            parts.append(self.path)
        text = ": ".join(parts + [self.message])
        return f"{text} — {self.hint}" if self.hint else text


class SpecError(UserError):
    """A spec could not be loaded or is invalid; `problems` lists everything found."""

    def __init__(self, problems: Problem | Sequence[Problem]):
        self.problems: list[Problem] = [problems] if isinstance(problems, Problem) else list(problems)
        if not self.problems:
            raise ValueError("SpecError needs at least one problem")
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)

    def with_file(self, file: str) -> "SpecError":
        """The same problems, located in `file` where they had no file yet."""
        return SpecError([p if p.file else replace(p, file=file) for p in self.problems])


def did_you_mean(word: Any, candidates: Iterable[str]) -> str:
    """`did you mean 'x'?` for the closest candidate, or "" when nothing is close."""
    if not isinstance(word, str):
        return ""
    names = [candidate for candidate in candidates if isinstance(candidate, str)]  # a YAML key may be a number
    matches = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    return f"did you mean {matches[0]!r}?" if matches else ""


def format_path(parts: Iterable[str | int]) -> str:
    """('model', 'text', 'layers', 7) -> 'model.text.layers[7]'."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text

