"""The request path of the queued intake: validate, append to the spool, answer 202."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from .errors import StorageError
from .events import parse_event
from .journal import EventStore
from .service import Responder, queued_body
from .shared import SharedState, forget_dropped, report_dropped
from .spool import SpoolWriter

logger = logging.getLogger(__name__)
RECENT_KEYS = 10_000
# How stale the queue depth behind the cap check may be; near the cap it is read afresh.
DEPTH_CHECK_SECONDS = 0.25


class Intake:
    """Falcosidekick drops an event on any answer but 2xx and never retries, so nothing here
    answers 429/503 for load: past the cap the drop policy applies, counted and logged.

    The event is durable once appended to the spool (a process crash cannot lose it); the
    worker takes it into the journal, where its key is deduplicated for good."""

    def __init__(self, responder: Responder, store: EventStore, spool: SpoolWriter,
                 shared: SharedState, wake: threading.Event, dedupe_seconds: float):
        self.responder = responder
        self.store = store
        self.spool = spool
        self.shared = shared
        self.wake = wake
        self.dedupe_seconds = dedupe_seconds
        self._lock = threading.Lock()
        # Keys accepted here lately: a resend is answered "duplicate", and its status is
        # known before the worker has taken it in.
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._depth = 0  # journal depth plus our spool backlog, when last read
        self._depth_read = float("-inf")
        self._since_read = 0  # events spooled since then

    def accept(self, body: bytes, content_type: str) -> dict[str, Any]:
        """Spool one event (EventError on bad input) and say what happened to it."""
        event = parse_event(body, content_type)
        self.responder.count_received(event)
        if content_type.startswith("application/cloudevents+json"):
            body = json.dumps(event.raw).encode("utf-8")  # store the unwrapped event
        if self.known(event.uuid) or not self._first_seen(event.uuid):
            status = "duplicate"  # here lately, or another replica already has it
        elif self._full():
            status = "dropped"
            report_dropped(self.store, self.shared, event.uuid)
        else:
            try:
                self.spool.append(event.uuid, body)
            except StorageError:
                # A resend, once there is room, must count as new.
                forget_dropped(self.shared, event.uuid)
                raise
            status = "queued"
            self._remember(event.uuid)
            self.wake.set()
        metrics = self.responder.metrics
        metrics.inc(metrics.intake, status)
        return queued_body(event, status)

    def known(self, key: str) -> bool:
        with self._lock:
            return key in self._recent

    def _remember(self, key: str) -> None:
        with self._lock:
            self._recent[key] = None
            self._since_read += 1
            if len(self._recent) > RECENT_KEYS:
                self._recent.popitem(last=False)

    def _full(self) -> bool:
        """Whether a new event must be dropped: with drop-new, once the queue (journal and
        our spool) is at the cap. drop-oldest makes room as the worker takes events in, so
        it drops here only when our spool alone is at the cap (the worker is not taking
        anything in): the disk must not fill up meanwhile."""
        cap = self.store.max_pending
        now = time.monotonic()
        if now - self._depth_read < DEPTH_CHECK_SECONDS and self._depth + self._since_read < cap:
            return False
        backlog = self.spool.backlog(self.store.spooled_records)
        depth = backlog if self.store.drop_policy != "drop-new" else \
            self.store.pending() + backlog
        with self._lock:
            self._depth, self._depth_read, self._since_read = depth, now, 0
        return depth >= cap

    def _first_seen(self, key: str) -> bool:
        try:
            return self.shared.first_seen(key, self.dedupe_seconds)
        except Exception as exc:  # noqa: BLE001 - e.g. Redis down: keep the event, say so
            logger.warning("cannot check event %s with the shared state (%s); keeping it, "
                           "this replica's journal still deduplicates", key,
                           type(exc).__name__)
            return True
