"""User-facing errors: bad files, bad configs, bad arguments.

A `TinylmError` is something the user can fix. The CLI prints its message and exits with code 2,
without a traceback (unless `--debug`). Internal invariants use `assert`, not these classes.
"""

from __future__ import annotations


class TinylmError(Exception):
    """An error the user can fix; its message says what was expected, what was found, and where."""

    exit_code = 2


class DataError(TinylmError):
    """A data file is missing, unreadable, malformed, or has the wrong shape."""


class ConfigError(TinylmError):
    """A config file or override is invalid. Carries every problem found, not just the first."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(self.problems)} problem(s){where}:"] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class CheckpointError(TinylmError):
    """A checkpoint directory is missing, incomplete, or from an unknown format version."""
