"""The last valid action table, kept in the state directory: a process that starts while a
refused table is published (a typo in the ConfigMap) serves the copy instead of failing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .actions import Registry
from .durable import fsync_directory
from .errors import TableError
from .table import Table, load_table, parse_table, read_table_text

logger = logging.getLogger(__name__)
COPY_NAME = "last-good-table.json"


@dataclass(frozen=True)
class StartupTable:
    """The table a process starts with; `refused` holds the configured file's problems when
    the kept copy serves instead of it."""

    table: Table
    refused: TableError | None = None
    refused_sha256: str | None = None


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_startup_table(path: str | None, registry: Registry, state_dir: str | Path
                       ) -> StartupTable:
    """The configured table, kept as the last good copy; when it is invalid, the copy of
    the last table that was valid at this path. Raises TableError only when there is none
    (a first start with a bad table refuses to start)."""
    if path is None:
        return StartupTable(load_table(None, registry))  # packaged: cannot be invalid
    try:
        text = read_table_text(path)
        table = parse_table(text, str(path), registry)
    except TableError as exc:
        kept = load_copy(state_dir, path, registry)
        if kept is None:
            raise
        logger.error("action table %s is invalid; serving the last good copy of it (%s) "
                     "until a valid one is published:\n%s", path, kept.source, exc)
        return StartupTable(kept, exc, _sha256_of_file(path))
    keep_copy(state_dir, path, text)
    return StartupTable(table)


def keep_copy(state_dir: str | Path, source: str, text: str) -> bool:
    """Write `text` as the last good table of `source`, atomically (a crash leaves the old
    copy or the new, never half of one). A full or read-only disk is logged, not raised:
    the table in hand still serves."""
    target = Path(state_dir).expanduser() / COPY_NAME
    sha = digest(text)
    if _read_copy(target).get("sha256") == sha:
        return True  # several processes load one table: one write is enough
    record = {"source": str(source), "sha256": sha, "saved": time.time(), "text": text}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(target, json.dumps(record).encode("utf-8"))
    except OSError as exc:
        logger.warning("cannot keep a copy of the action table in %s (%s); a restart while "
                       "an invalid table is published would then refuse to start",
                       target, exc.strerror or exc)
        return False
    return True


def load_copy(state_dir: str | Path, source: str, registry: Registry) -> Table | None:
    """The kept copy of `source`'s last good table, or None (none kept, another file's, or
    unreadable: a copy is only trusted when it still parses)."""
    record = _read_copy(Path(state_dir).expanduser() / COPY_NAME)
    if record.get("source") != str(source) or not isinstance(record.get("text"), str):
        return None
    label = f"{source} (last good copy, sha256 {str(record.get('sha256'))[:12]})"
    try:
        return parse_table(record["text"], label, registry)
    except TableError as exc:  # e.g. an action this version no longer has
        logger.error("the kept copy of the action table is not valid either:\n%s", exc)
        return None


def _read_copy(path: Path) -> dict:
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _sha256_of_file(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _write_atomically(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable, where the OS allows
        fsync_directory(target.parent)
