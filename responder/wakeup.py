"""Waking the queue worker in another process as soon as the intake spools an event.

`responder serve` takes events in in one process and acts on them in another; without a
signal the worker would only find a new event at its next poll of the spool (50 ms, 25 ms
late on average, the largest part of the queued path's time to act). The intake sends one
datagram to a Linux abstract unix socket named after the spool directory, which the
worker's process listens on. Nothing depends on it arriving: a lost datagram (a full
socket buffer, no listener yet, a restarted worker) only leaves the event to the poll.
The socket is abstract, so it needs no file, no cleanup, and a dead listener frees it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import threading
from pathlib import Path

logger = logging.getLogger(__name__)


def wake_address(spool_dir: str | Path) -> bytes:
    """The abstract socket name for the worker taking events from `spool_dir`."""
    digest = hashlib.sha256(str(Path(spool_dir).resolve()).encode()).hexdigest()[:32]
    return b"\0falco-responder-wake-" + digest.encode()


class WakeSender:
    """The intake's side: `set()` nudges the worker; never blocks, never raises."""

    def __init__(self, spool_dir: str | Path):
        self.address = wake_address(spool_dir)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def set(self) -> None:
        # No listener (refused) or its buffer full (EAGAIN): it is awake, or it polls.
        with contextlib.suppress(OSError):
            self._sock.sendto(b"!", self.address)

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
        self.address = wake_address(spool_dir)
        self.event = event
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(self.address)
        except OSError as exc:
            logger.info("another worker listens for wake-ups on this spool (%s); polling",
                        exc.strerror)
            self._sock.close()
            self._sock = None

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
                contextlib.suppress(OSError):
            sock.sendto(b"!", self.address)  # unblocks recv, which then sees _stopping
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()
        self._sock = None
