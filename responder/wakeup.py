"""Waking the queue worker in another process as soon as the intake spools an event.

`responder serve` takes events in in one process and acts on them in another; without a
signal the worker would only find a new event at its next poll of the spool (50 ms, 25 ms
late on average, the largest part of the queued path's time to act). The intake sends one
datagram to a unix socket in the spool directory, which the worker's process listens on.
Nothing depends on it arriving: a lost datagram (a full socket buffer, no listener yet, a
restarted worker) only leaves the event to the poll.

The socket is a file, `<spool>/wake/sock`, in a directory only our uid may enter (0700),
the socket itself 0600. An abstract socket (no file) was reachable by every process sharing
the pod's network namespace: any of them could flood it or bind its name first. A path
needs the state volume mounted and our uid. A listener removes its file when it closes; one
left by a killed listener is found dead (refused) and replaced by the next.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)
SUN_PATH_MAX = 107  # bytes of a unix socket path, without the terminating NUL


def wake_path(spool_dir: str | Path) -> Path:
    """The socket file of the worker taking events from `spool_dir`."""
    return Path(spool_dir).resolve() / "wake" / "sock"


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """`path` as a socket address: itself, or, when too long for one, the same file named
    through /proc/self/fd and a descriptor of its directory (raises OSError if that is gone)."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class WakeSender:
    """The intake's side: `set()` nudges the worker; never blocks, never raises."""

    def __init__(self, spool_dir: str | Path):
        self.path = wake_path(spool_dir)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def set(self) -> None:
        # No listener (no file, refused) or its buffer full (EAGAIN): it is awake, or it polls.
        with contextlib.suppress(OSError), _address(self.path) as address:
            self._sock.sendto(b"!", address)

    def close(self) -> None:
        self._sock.close()


class Wakeups:
    """Several things to wake with one `set()`: this process's worker, another's."""

    def __init__(self, *targets):
        self.targets = targets

    def set(self) -> None:
        for target in self.targets:
            target.set()


class WakeListener:
    """The worker's side: a thread that sets `event` whenever a datagram arrives. If
    another live process already listens for this spool, this one stays deaf (and says
    so): its worker still polls."""

    def __init__(self, spool_dir: str | Path, event: threading.Event):
        self.path = wake_path(spool_dir)
        self.event = event
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._inode = 0
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._bind()
        except OSError as exc:
            logger.info("not listening for wake-ups on this spool (%s); polling",
                        exc.strerror or exc)
            self._sock.close()
            self._sock = None

    def _bind(self) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)  # also when it was there before, made otherwise
        with _address(self.path) as address:
            try:
                self._sock.bind(address)
            except OSError:
                if _listened(address):
                    raise  # another live worker's: EADDRINUSE says so
                os.unlink(address)  # left by a killed listener
                self._sock.bind(address)
            os.chmod(address, 0o600)
            self._inode = os.stat(address).st_ino

    @property
    def listening(self) -> bool:
        return self._sock is not None

    def start(self) -> WakeListener:
        if self._sock is not None:
            self._thread = threading.Thread(target=self._run, name="spool-wakeup", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._sock.recv(64)
                # A storm sends one datagram per event: take all that are waiting, then
                # wake the worker once.
                while True:
                    self._sock.recv(64, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            except OSError:
                return  # closed
            self.event.set()

    def close(self, timeout: float = 2.0) -> None:
        if self._sock is None:
            return
        self._stopping = True
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, \
                contextlib.suppress(OSError), _address(self.path) as address:
            sock.sendto(b"!", address)  # unblocks recv, which then sees _stopping
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()
        self._sock = None
        with contextlib.suppress(OSError), _address(self.path) as address:
            if os.stat(address).st_ino == self._inode:  # not a successor's
                os.unlink(address)


def _listened(address: str) -> bool:
    """True when a live socket is bound at `address` (a dead one's file refuses)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
    return True
