"""The one error type of HF checkpoint I/O: something about the user's files, not a bug.

A UserError: the CLI prints its message and exits with code 2, without a traceback.
"""

from assembler.spec.errors import UserError


class CheckpointError(UserError):
    """A checkpoint folder (or an export target) that cannot be used; the message names the file, key
    or field that is wrong and what to do about it."""

    def __str__(self) -> str:  # keep multi-line messages readable (no repr quoting)
        return str(self.args[0]) if self.args else ""
