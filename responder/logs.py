"""Log set-up: plain text for people, one JSON object per line for log pipelines."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else came in through `extra=` and is data.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


#: The most of one sender-chosen string (a rule name, a pod name) a decision line repeats.
LOGGED_TEXT_LIMIT = 300


def clipped(text: str | None, limit: int = LOGGED_TEXT_LIMIT) -> str | None:
    """`text` for a log line, cut to `limit` characters (saying how long it was), so that a
    hostile event is not copied whole into every line about it."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and every `extra` key."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time, not what it was at set-up."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(log_format: str, level: str) -> None:
    """Send our logs to stdout in the chosen format; called once by the app factory."""
    handler = StdoutHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("responder")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    _skip_unused_record_fields()


def _skip_unused_record_fields() -> None:
    """The worker logs every event and decision; neither format shows the source line,
    thread or process name, so records need not look them up (the optimisations the
    logging HOWTO lists; process ids stay, gunicorn's own lines show them)."""
    logging._srcfile = None  # no stack walk per record to find the caller
    logging.logThreads = False
    logging.logMultiprocessing = False


def configure_cli_logging() -> None:
    """For `check` and `replay`: stdout carries their output, so logs go to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("responder")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    root.propagate = False


class Trouble:
    """A failure that lasts (a full or read-only volume) is logged as it starts, with its
    traceback, then at most once per `every` seconds, and once when it ends: not on every
    poll, which would fill the log (and a full disk) meanwhile. With `settle`, it has ended
    only once nothing failed for that long: a failure that comes and goes many times a
    second (accept under a flood) is one trouble, not two lines per flip."""

    def __init__(self, what: str, logger: logging.Logger, every: float = 60.0,
                 settle: float = 0.0):
        self.what = what
        self.logger = logger  # the caller's: the records say where the trouble is
        self.every = every
        self.settle = settle
        self.since: float | None = None
        self._said = 0.0
        self._last = 0.0

    def failed(self, exc: BaseException) -> None:
        """Call with the error caught (asyncio hands one to its exception handler)."""
        now = self._last = time.monotonic()
        if self.since is None:
            self.since = self._said = now
            self.logger.error("%s failed; retrying", self.what, exc_info=exc)
        elif now - self._said >= self.every:
            self._said = now
            self.logger.error("%s still failing after %.0f s: %s: %s", self.what, now - self.since,
                         type(exc).__name__, exc)

    def passed(self) -> None:
        if self.since is not None and time.monotonic() - self._last >= self.settle:
            self.logger.warning("%s works again after %.0f s", self.what,
                           time.monotonic() - self.since)
            self.since = None
