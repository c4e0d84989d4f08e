"""fsync helpers for writes that must survive a crash (HF exports, training checkpoints).

A file is durable once its bytes are fsynced; its name is durable once its directory is fsynced.
Both exporters and checkpoints write everything, sync, then publish (rename or marker file).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO, Callable


def fsync_file(path: Path) -> None:
    """Flush an already-written file's bytes to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def follow_umask(path: Path) -> None:
    """Give `path` the mode a new file gets (0666 less the umask). safetensors' `save_file` writes
    through a private temporary file (-rw-------), which a server running as another user could
    not read."""
    umask = os.umask(0)  # the only way to read it; set back at once
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (names created, renamed or removed in it) to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create `path`, let `write(file)` fill it, and fsync it before returning."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def replace_durably(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: a kill leaves the old file or the new one, never a torn one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_durably(temporary, lambda f: f.write(data))
    os.replace(temporary, path)
    fsync_dir(path.parent)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` is, or wraps, "no space left" / "quota exceeded" (DCP wraps a rank's OSError
    in a CheckpointException whose `failures` map ranks to (exception, traceback))."""
    stack, seen = [error], set()
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        stack += [current.__cause__, current.__context__]
        for failure in (getattr(current, "failures", None) or {}).values():
            stack.append(failure[0] if isinstance(failure, tuple) else failure)
    return False
