"""Errors by cause: bad events, bad configuration, bad action tables."""

from __future__ import annotations


class ResponderError(Exception):
    """Base of every error this package raises on purpose."""


class EventError(ResponderError):
    """A request body that is not a usable Falco event (answered with HTTP 400)."""


class StorageError(ResponderError):
    """The state directory cannot take an event (full, read-only): HTTP 507, never a 500."""


class ConfigError(ResponderError):
    """A setting that cannot be used; the message names the variable or file."""


class TableError(ConfigError):
    """An action table with one or more problems; `problems` lists every one."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        summary = f"{source}: {len(self.problems)} problem(s) in the action table"
        # Each line names the file too, so grep and editors can jump straight to it.
        super().__init__("\n".join([summary, *(f"  {source}: {p}" for p in self.problems)]))


class UndoRefused(ResponderError):
    """An undo that cannot be started: `status` is the HTTP answer (404 unknown event, 409
    still being acted on or already being undone, 400 a bad request)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
