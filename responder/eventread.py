"""What `GET /events/<uuid>` and `GET /events/<uuid>/evidence` answer: read from this
replica's journal, or, for an event another replica holds (with Redis), asked of that
replica through the relay. Behind a Service with two replicas, the one a client reaches
is a coin toss; the answer must not be."""

from __future__ import annotations

import logging
import threading
from typing import Any

from .approvals import awaiting_decisions, public_view
from .evidencestore import bundle_listing, recorded_bundles
from .journal import AWAITING
from .logs import clipped
from .relay import Relay
from .service import Responder

logger = logging.getLogger(__name__)
#: How long a read waits for the replica holding the event (a journal read there).
READ_WAIT_SECONDS = 2.0
STATUS, EVIDENCE = "status", "evidence"


def event_status(responder: Responder, uuid: str) -> dict[str, Any] | None:
    """The event's state and decisions as this replica's journal has them; None: unknown."""
    status = responder.store.status(uuid)
    if status is not None and status.get("approval"):
        record = status["approval"]
        status["approval"] = public_view(record)
        if status["state"] == AWAITING:
            status["decisions"] += awaiting_decisions(record)
    return status


def event_evidence(responder: Responder, uuid: str, status: dict[str, Any] | None
                   ) -> tuple[int, dict[str, Any]]:
    """The evidence bundles of the event whose journal `status` this is (None: unknown),
    listed and verified against the store: (200, listing), or (404, error) for an unknown
    event or one without a bundle."""
    bundles = recorded_bundles((status or {}).get("decisions", []))
    if not bundles:
        said = "has no evidence bundle" if status else "unknown (never received, or past " \
            "retention)"
        return 404, {"error": f"event {clipped(uuid, 128)} {said}"}
    return 200, {"uuid": uuid, "bundles": [bundle_listing(responder.evidence, b)
                                           for b in bundles]}


def read_here(responder: Responder, uuid: str, what: str) -> tuple[int, dict[str, Any]]:
    """A read another replica passed on (ReadServer): the same answers as the routes'."""
    if what == EVIDENCE:
        return event_evidence(responder, uuid, responder.store.status(uuid))
    status = event_status(responder, uuid)
    return (200, status) if status is not None else (404, {"error": "unknown event"})


def read_elsewhere(relay: Relay | None, uuid: str, what: str, gate: threading.Semaphore
                   ) -> tuple[int, dict[str, Any]] | None:
    """Ask the replica Redis names as holding `uuid`: (status, body) with `replica` added
    to a 200; None when no other replica holds it (or Redis cannot say: logged); (504,
    error) when the holder does not answer in time; (429, error) while `gate` is taken: a
    relayed read holds a request thread while it waits, and events must still find one."""
    import redis

    if relay is None:
        return None
    try:
        owner = relay.where(uuid)
        if owner is None or owner == relay.owner:
            return None
        if not gate.acquire(blocking=False):
            return 429, {"error": f"event {clipped(uuid, 128)} is held by replica {owner}, "
                         "and this replica is already waiting on others for as many reads "
                         "as it lets wait; try again"}
        try:
            answer = relay.request_read(owner, uuid, what, READ_WAIT_SECONDS)
        finally:
            gate.release()
    except redis.RedisError as exc:
        relay.trouble.failed(exc)
        return None
    if answer is None:
        return 504, {"error": f"event {clipped(uuid, 128)} is held by replica {owner}, which "
                     f"did not answer within {READ_WAIT_SECONDS:g} s; try again"}
    body, status = answer.get("answer"), answer.get("status")
    if not isinstance(body, dict) or not isinstance(status, int) or not 200 <= status < 600:
        return 502, {"error": f"replica {owner} answered a read of event {clipped(uuid, 128)} "
                     "with something that is not a read's answer"}
    return status, ({**body, "replica": owner} if status == 200 else body)
