"""What the operating system refuses in a path, told before any file is opened: a NUL byte, a file
or folder name past NAME_MAX, a whole path past PATH_MAX (the POSIX limits of Linux and macOS file
systems). Such a path from a spec or the command line is the user's error, not an OSError or a
ValueError from deep inside a run."""

from __future__ import annotations

NAME_MAX = 255  # bytes in one file or folder name
PATH_MAX = 4095  # bytes in a whole path (4096 with the terminating NUL)


def unusable_path_reason(path: str) -> str | None:
    """Why the OS would refuse `path` ("it contains a NUL byte", ...), or None when it would not."""
    encoded = path.encode("utf-8", "surrogateescape")
    if b"\0" in encoded:
        return "it contains a NUL byte, which no file name can"
    if len(encoded) > PATH_MAX:
        return f"it is {len(encoded):,} bytes long, past the {PATH_MAX:,} a path may have"
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        return f"it has a file or folder name of {len(longest):,} bytes, past the {NAME_MAX} a name may have"
    return None
