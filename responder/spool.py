"""The intake's spool: append-only segment files the request path writes events to.

An append is one write(2) of a framed record, which a process crash cannot undo, instead of
a SQLite transaction on the request path (a fifth of a millisecond here, more than the rest
of the request). The worker takes the records into the SQLite journal in batches, where
each event gets its idempotency key checked, its cap applied and its processing state.

Each writing process has its own segment and holds an exclusive flock on it while it
writes there, so the reader knows when a segment is complete: once the lock is free (the
writer rotated or died) and everything in it is read, the segment can go.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .durable import fsync_directory
from .errors import StorageError
from .logs import Trouble

logger = logging.getLogger(__name__)

# magic, payload crc32, key length, body length; the payload is key + body.
HEADER = struct.Struct("<4sIII")
MAGIC = b"FRS2"
SUFFIX = ".spool"
SEGMENT_BYTES = 32 * 2**20
# How finely the age of the oldest record not yet taken in is known: an append notes the
# time only when the last note is this old, so a storm costs a few notes a second.
MARK_SECONDS = 0.1


@dataclass(frozen=True)
class Segment:
    """What a read of one segment found: complete records from `start` to `end`."""

    name: str
    start: int
    end: int
    records: list[tuple[str, bytes]]
    at_eof: bool  # nothing readable after `end` (a torn or corrupt tail counts as read)
    discarded: int = 0  # bytes of a torn or corrupt tail given up on


class SpoolWriter:
    """Appends records for one process (thread-safe); reopens after a fork."""

    def __init__(self, directory: str | Path, segment_bytes: int = SEGMENT_BYTES):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        self._fd: int | None = None
        self._pid = 0
        self._size = 0
        self.name = ""
        #: Records written per segment of ours, for the intake's backlog estimate.
        self.written: dict[str, int] = {}
        # Per segment: (records written before it, wall time), a new mark once the last is
        # MARK_SECONDS old, so every record was written less than MARK_SECONDS after the
        # last mark before it.
        self._marks: dict[str, deque[tuple[int, float]]] = {}

    def append(self, key: str, body: bytes) -> None:
        """Write one record; when this returns, a crash of this process cannot lose it."""
        raw_key = key.encode("utf-8")
        payload = raw_key + body
        record = HEADER.pack(MAGIC, zlib.crc32(payload), len(raw_key), len(body)) + payload
        with self._lock:
            try:
                if self._fd is None or self._pid != os.getpid() or \
                        self._size >= self.segment_bytes:
                    self._open_segment()
                written = os.write(self._fd, record)
            except OSError as exc:
                raise StorageError(f"cannot write to the spool in {self.directory}: "
                                   f"{exc.strerror}") from None
            if written != len(record):  # a full disk: take the torn record back, then fail
                os.ftruncate(self._fd, self._size)
                raise StorageError(f"cannot write to the spool in {self.directory}: short "
                                   f"write ({written} of {len(record)} bytes); full?")
            self._size += written
            count = self.written.get(self.name, 0)
            self.written[self.name] = count + 1
            marks = self._marks.setdefault(self.name, deque())
            now = time.time()
            if not marks or now - marks[-1][1] >= MARK_SECONDS:
                marks.append((count, now))

    def backlog(self, taken_in: Callable[[list[str]], dict[str, int]]) -> int:
        """Records of ours not yet in the journal; `taken_in` says how many of each of the
        named segments are."""
        return self.unread(taken_in)[0]

    def unread(self, taken_in: Callable[[list[str]], dict[str, int]]
               ) -> tuple[int, float | None]:
        """Records of ours not yet in the journal, and when the oldest of them was written
        (a time.time() value, up to MARK_SECONDS early; None when there is none)."""
        with self._lock:
            written, current = dict(self.written), self.name
        taken = taken_in(list(written))
        unread, oldest = 0, None
        for name, count in written.items():  # oldest segment first
            if name != current and not (self.directory / name).exists():
                with self._lock:  # read to its end and deleted: nothing of it is waiting
                    self.written.pop(name, None)
                    self._marks.pop(name, None)
                continue
            done = taken.get(name, 0)
            unread += count - done
            first = self._first_unread_mark(name, done)
            if oldest is None and count > done:
                oldest = first
        return unread, oldest

    def _first_unread_mark(self, name: str, done: int) -> float | None:
        """Forget the marks of records the journal has; the time of the first left."""
        with self._lock:
            marks = self._marks.get(name)
            while marks and len(marks) > 1 and marks[1][0] <= done:
                marks.popleft()
            return marks[0][1] if marks else None

    def sync(self) -> None:
        """fdatasync the segment in use: the batched flush that makes appends power-safe."""
        with self._lock:
            # A duplicate, so a rotation meanwhile cannot close (or reuse) what we flush;
            # the flush itself runs unlocked, never holding up an append.
            fd = os.dup(self._fd) if self._fd is not None and self._pid == os.getpid() \
                else None
        if fd is not None:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def start_sync(self, seconds: float) -> None:
        """Flush on a timer, in a thread of the writing process (batched fsyncs)."""

        # A flush that fails (EMFILE, EIO) leaves the records written in the segment, read
        # and acted on as usual, but not yet on disk against a power loss: the next tick
        # flushes them again. Logged as it starts and once a minute, not every tick.
        trouble = Trouble("spool flush (fdatasync) of records already answered 202", logger)

        def loop() -> None:
            while not self._stop.wait(seconds):
                try:
                    self.sync()
                except OSError as exc:
                    trouble.failed(exc)
                else:
                    trouble.passed()

        self._syncer = threading.Thread(target=loop, name="spool-sync", daemon=True)
        self._syncer.start()

    def close(self) -> None:
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(5)
        self.sync()
        with self._lock:
            self._close()

    def _open_segment(self) -> None:
        if self._fd is not None:
            if self._pid == os.getpid():
                os.fdatasync(self._fd)  # a finished segment is flushed before it is let go
            self._close()
        # Named by creation time first: the reader takes segments roughly in arrival order.
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        # Locked under a name the reader ignores, then renamed: a reader must never see
        # a segment without its lock and take it for one whose writer is gone.
        creating = self.directory / (name + ".new")
        fd = os.open(creating, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held while this process may still write here
            os.rename(creating, self.directory / name)
            fsync_directory(self.directory)  # the name survives a power loss too
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._pid, self._size, self.name = fd, os.getpid(), 0, name

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # in a forked child this only drops the child's copy
            self._fd = None


def segments(directory: str | Path) -> list[Path]:
    """Segment files, oldest first."""
    path = Path(directory)
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.name.endswith(SUFFIX))


def writer_gone(path: Path) -> bool:
    """True when no process holds the segment's lock: nothing more will be appended."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def read_segment(path: Path, start: int, final: bool, limit: int = 1000,
                 chunk: int = 4 * 2**20) -> Segment:
    """Up to `limit` complete records from byte `start`. A record cut short is waited for
    while the writer lives; once it is gone (`final`), a torn or corrupt tail is given up."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(start)
        data = f.read(chunk)
        if len(data) >= HEADER.size:  # one record larger than a chunk: read all of it
            _, _, key_len, body_len = HEADER.unpack_from(data)
            if HEADER.size + key_len + body_len > len(data):
                data += f.read(HEADER.size + key_len + body_len - len(data))
    records: list[tuple[str, bytes]] = []
    pos = 0
    while len(records) < limit and len(data) - pos >= HEADER.size:
        magic, crc, key_len, body_len = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + key_len + body_len
        if magic != MAGIC or key_len == 0:
            return _corrupt(path, start, pos, size, records, "no record header")
        if end > len(data):
            break  # beyond this read, still being written, or torn by a crash
        payload = data[pos + HEADER.size:end]
        if zlib.crc32(payload) != crc:
            return _corrupt(path, start, pos, size, records, "checksum mismatch")
        records.append((payload[:key_len].decode("utf-8", "replace"), payload[key_len:]))
        pos = end
    left = size - (start + pos)
    if final and left > 0 and start + len(data) == size and len(records) < limit:
        logger.warning("spool %s: %d byte(s) of a record cut short by a crash, discarded",
                       path.name, left)
        return Segment(path.name, start, size, records, True, left)
    return Segment(path.name, start, start + pos, records, left <= 0)


def _corrupt(path: Path, start: int, pos: int, size: int, records: list, why: str
             ) -> Segment:
    """Framing is lost past a damaged record (e.g. zeroed blocks after a power loss):
    keep what came before it, say how much is given up, and move past the rest."""
    lost = size - (start + pos)
    logger.error("spool %s: %s at byte %d; %d byte(s) after it discarded", path.name, why,
                 start + pos, lost)
    return Segment(path.name, start, size, records, True, lost)
