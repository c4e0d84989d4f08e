"""The path parameter of every command: click.Path, and a path the OS would refuse (a NUL byte, a
name or a path past its length limits) is a usage error (exit 2) naming the argument, instead of an
OSError or ValueError from the first file the command opens."""

from __future__ import annotations

import os
from typing import Any

import click

from assembler.common.paths import unusable_path_reason


class UsablePath(click.Path):
    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (str, bytes, os.PathLike)):
            text = os.fsdecode(value)
            reason = unusable_path_reason(text)
            if reason:
                self.fail(f"{text if len(text) <= 80 else text[:77] + '...'!r} is not a usable path: {reason}", param, ctx)
        return super().convert(value, param, ctx)
