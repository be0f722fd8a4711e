"""Live reload of the action table, robust to the kubelet's ConfigMap symlink swap.

The kubelet updates a mounted ConfigMap by writing a new timestamped directory and
atomically renaming the `..data` symlink to it; the file we were given is a symlink through
`..data`, so its inode and mtime as seen by naive watchers may not change. Polling the
content hash of the resolved path sees every swap.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from .actions import Registry
from .errors import TableError
from .table import Table, parse_table

logger = logging.getLogger(__name__)


class TableReloader:
    """Watches one table file; a valid change is handed to `apply`, an invalid one is kept
    out, with every problem logged and remembered in `problems`."""

    def __init__(self, path: str, registry: Registry, apply: Callable[[Table], None],
                 on_error: Callable[[list[str]], None] | None = None,
                 keep: Callable[[str], None] | None = None, refused: list[str] | None = None):
        self.path = Path(path)
        self.registry = registry
        self.apply = apply
        self.on_error = on_error
        #: Told the text of each table applied (kept as the last good copy).
        self.keep = keep
        # A process that started on the last good copy starts with the file's problems.
        self.problems: list[str] = list(refused or [])
        self._digest = self._read_digest()[1]
        #: The content hash of the refused file, while one is pending.
        self.refused_sha256: str | None = self._digest if self.problems else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read_digest(self) -> tuple[bytes | None, str | None]:
        try:
            data = self.path.read_bytes()  # follows ..data -> the current version
        except OSError:
            return None, None
        return data, hashlib.sha256(data).hexdigest()

    def check(self) -> bool:
        """Look once; True when a new table was applied."""
        data, digest = self._read_digest()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        try:
            table = parse_table(data.decode("utf-8", errors="replace"), str(self.path),
                                self.registry)
        except TableError as exc:
            self.problems = exc.problems
            self.refused_sha256 = digest
            logger.error("action table %s changed but is invalid; keeping the last good "
                         "table:\n%s", self.path, exc)
            if self.on_error:
                self.on_error(exc.problems)
            return False
        self.problems = []
        self.refused_sha256 = None
        self.apply(table)
        if self.keep:
            self.keep(data.decode("utf-8", errors="replace"))
        logger.info("action table %s reloaded: %d rule(s)", self.path, len(table.rules))
        return True

    def start(self, interval: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(interval,),
                                        name="table-reloader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive any surprise
                logger.exception("action table reload check failed")
