"""Audit Events off the containment path: recorded by a thread of their own, through an API
client and a request budget of their own (RESPONDER_AUDIT_QPS/BURST).

The queued worker acts on one event after another; were it to create the audit Event of
each action before turning to the next event, every alert of a burst would wait for the
bookkeeping of all those before it, and a busy audit budget would hold up containment.
Here a containment call never waits for a bookkeeping call: not for its request, not for
its tokens. The decision itself is logged (and its outcome journalled) before the Event is
queued, so the Event is the cluster-side copy of a record that already exists.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Mapping

from .audit import DROPPED, RECORDED, EventRecorder, describe
from .events import Event
from .executor import ActionReport

logger = logging.getLogger(__name__)
CAPACITY = 10_000  # events whose Events wait; at 10/s that is a quarter of an hour
# Best effort: the queue is memory only. A killed process loses it uncounted; the decision
# records in the journal are the durable audit trail (docs/architecture.md, "Audit trail").


class AuditQueue:
    """`record_all` returns at once; a thread started on first use creates the Events."""

    def __init__(self, recorder: EventRecorder, capacity: int = CAPACITY,
                 count: Callable[[str], None] = lambda outcome: None):
        self.recorder = recorder
        #: Called with "dropped" for each Event given up (the metric); the recorder counts
        #: the ones it tries.
        self.count = count
        self._queue: queue.Queue = queue.Queue(capacity)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def record_all(self, event: Event, reports: list[ActionReport],
                   notes: Mapping[str, str] | None = None) -> int:
        """Queue the Events of the reports that need one (`notes` by table rule, e.g. who
        approved); how many were queued."""
        wanted = [r for r in reports
                  if not r.decision.dry_run and r.result.outcome in RECORDED]
        if not wanted:
            return 0
        self._ensure_started()
        try:
            self._queue.put_nowait((event, wanted, notes))
        except queue.Full:
            self._drop(event, wanted, f"audit queue full ({self._queue.maxsize} events waiting)")
            return 0
        return len(wanted)

    def _drop(self, event: Event, reports: list[ActionReport], why: str) -> None:
        # Events are best effort; the journal's decision records are the durable trail.
        for report in reports:
            logger.error("%s: audit Event dropped for %s; the decision log has it", why,
                         describe(event, report))
            self.count(DROPPED)

    def _ensure_started(self) -> None:
        with self._lock:
            # After a fork the thread is the parent's: start one in this process.
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="audit-events",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                event, reports, notes = item
                if notes:
                    self.recorder.record_all(event, reports, notes)
                else:  # the common case, in the shape every recorder takes
                    self.recorder.record_all(event, reports)
            except Exception:  # noqa: BLE001 - record_all never raises; a bug must not stop us
                logger.exception("recording audit Events failed")
            finally:
                self._queue.task_done()

    def _drop_queued(self) -> None:
        """Stopping with Events still queued: say which, and count them, rather than let
        them go with the process unnoticed."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                if item is not None:
                    self._drop(item[0], item[1], "stopping before it was recorded")
            finally:
                self._queue.task_done()

    def wait(self, timeout: float) -> bool:
        """Until every queued Event is recorded (True), or `timeout` seconds pass."""
        done = threading.Event()

        def join() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=join, daemon=True).start()
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Record what is queued (within `timeout`), then stop the thread."""
        with self._lock:
            thread = self._thread if self._pid == os.getpid() else None
            self._thread = None  # a later record_all starts another
        if thread is None:
            return
        if not self.wait(timeout):
            self._drop_queued()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            return  # the thread is a daemon: it goes with the process
        thread.join(timeout)
