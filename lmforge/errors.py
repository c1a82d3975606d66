"""The one exception family of lmforge.

The library raises these; the CLI renders them once (one red line and a hint
on stderr). ``UsageError`` is a user mistake (exit code 2), everything else a
failure (exit code 1).
"""

from __future__ import annotations


class LmforgeError(Exception):
    """A failure with a message a person can act on.

    ``message`` says what went wrong and which file or value; ``hint`` says
    what to do about it.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(LmforgeError):
    """A bad argument, option, name or config value: exit code 2."""

    exit_code = 2


class NotFoundError(UsageError):
    """A dataset, run or checkpoint name that does not exist."""


class ConfigError(UsageError):
    """A config value or key that is invalid."""


class DataError(LmforgeError):
    """Token files or sources that are missing, corrupt or inconsistent."""


class CheckpointError(LmforgeError):
    """A checkpoint that is missing, incomplete, corrupt or incompatible."""
