"""The request path of the queued intake: validate, record durably, answer 202. No actions."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from .events import parse_event
from .service import Responder, queued_body
from .shared import SharedState
from .store import EventStore

logger = logging.getLogger(__name__)


class Intake:
    """Falcosidekick drops an event on any answer but 2xx and never retries, so nothing here
    answers 429/503 for load: past the cap the drop policy applies, counted and logged."""

    def __init__(self, responder: Responder, store: EventStore, shared: SharedState,
                 wake: threading.Event, dedupe_seconds: float):
        self.responder = responder
        self.store = store
        self.shared = shared
        self.wake = wake
        self.dedupe_seconds = dedupe_seconds

    def accept(self, body: bytes, content_type: str) -> dict[str, Any]:
        """Record one event (EventError on bad input) and say what the table plans for it."""
        event = parse_event(body, content_type)
        self.responder.count_received(event)
        if content_type.startswith("application/cloudevents+json"):
            body = json.dumps(event.raw).encode("utf-8")  # store the unwrapped event
        if not self._first_seen(event.uuid):
            status = "duplicate"  # another replica already has it
        else:
            added = self.store.add(event.uuid, body)
            status = added.status
            if added.status == "dropped" or added.dropped_key:
                logger.error("queue full (%d unfinished events): dropped event %s (policy %s)",
                             self.store.max_pending, added.dropped_key, self.store.drop_policy)
                self.responder.metrics.intake.labels("dropped").inc()
                self._forget(added.dropped_key)
        if status != "dropped":
            self.responder.metrics.intake.labels(status).inc()
        self.wake.set()
        return queued_body(event, status)

    def _forget(self, key: str) -> None:
        try:
            self.shared.forget(key)
        except Exception as exc:  # noqa: BLE001 - only costs a missed resend, say so
            logger.warning("cannot forget dropped event %s in the shared state (%s)", key,
                           type(exc).__name__)

    def _first_seen(self, key: str) -> bool:
        try:
            return self.shared.first_seen(key, self.dedupe_seconds)
        except Exception as exc:  # noqa: BLE001 - e.g. Redis down: keep the event, say so
            logger.warning("cannot check event %s with the shared state (%s); keeping it, "
                           "this replica's journal still deduplicates", key,
                           type(exc).__name__)
            return True
