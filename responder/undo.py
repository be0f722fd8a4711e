"""Undoing what the responder did about an event, from what its actions recorded then.

`Undoer.undo(uuid, by)` is the one way in: the HTTP endpoint (`POST /events/<uuid>/undo`)
and anything else in the serving process (a Slack button) call it. It runs synchronously
against the API, keeps each undo in the journal, and tells the cluster (an audit Event per
object put back), the log (one `undo` record) and Slack what was undone and what was not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .actions import (
    Action,
    ObjectRef,
    Outcome,
    Registry,
    Result,
    Target,
    api_failure,
    default_registry,
)
from .audit import EventRecorder, core_event
from .errors import EventError, UndoRefused
from .events import Event, Priority, parse_event
from .journal import EventStore, Recorded
from .logs import clipped
from .relay import Relay, relayed_undo
from .retry import RetryPolicy
from .shared import Contended, SharedState, acquire

logger = logging.getLogger(__name__)
#: What came of undoing one action.
UNDONE, ALREADY_UNDONE, NOT_UNDONE, FAILED = "undone", "already-undone", "not-undone", "failed"
#: The whole undo's outcome when no action had anything to reverse (dry-run, skipped,
#: a deletion): said apart from `undone`, so a script can tell nothing was put back.
NOTHING = "nothing-to-undo"
#: An action's undo result, as its outcome reads in an undo.
_OUTCOMES = {Outcome.DONE: UNDONE, Outcome.ALREADY_DONE: ALREADY_UNDONE,
             Outcome.SKIPPED: NOT_UNDONE, Outcome.FAILED: FAILED}
#: The audit Event's reason on each object an undo put back.
REASON = "FalcoResponseUndone"
ACTED = (Outcome.DONE, Outcome.ALREADY_DONE)
BY_LIMIT = 128
#: A second undo of the same event waits this long for the first, then is refused (409).
LOCK_WAIT_SECONDS = 2.0
LOCK_SECONDS = 120.0


@dataclass(frozen=True)
class ActionUndo:
    """What came of undoing one of the event's actions."""

    action: str
    target: Mapping[str, str]
    outcome: str
    reason: str | None = None
    #: The object put back, for its audit Event.
    involved: ObjectRef | None = None
    slot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "target": dict(self.target),
                               "outcome": self.outcome}
        if self.reason:
            out["reason"] = self.reason
        if self.slot:
            out["slot"] = self.slot
        return out


class Undoer:
    """Undoes recorded events in the serving process. Parts are passed in (`wiring`)."""

    def __init__(self, store: EventStore, actions: Mapping[str, Action] | None,
                 shared: SharedState, *, registry: Registry | None = None,
                 recorder: EventRecorder | None = None, notifier: Any = None,
                 retry: RetryPolicy | None = None,
                 idle_reason: str = "no Kubernetes cluster configured",
                 clock: Callable[[], float] = time.time,
                 lock_wait: float = LOCK_WAIT_SECONDS, max_running: int = 1):
        self.store = store
        self.actions = actions
        #: What each recorded action declares (whether it can be undone), cluster or not.
        self.registry = registry or default_registry()
        self.lock_wait = lock_wait
        self.shared = shared
        self.recorder = recorder
        self.notifier = notifier
        self.retry = retry or RetryPolicy()
        self.idle_reason = idle_reason
        self.clock = clock
        #: Undos at once in this process: each holds a request thread while it calls the API,
        #: and events must still find one (Falcosidekick drops what it cannot deliver).
        self.max_running = max(1, max_running)
        self._running = threading.BoundedSemaphore(self.max_running)
        #: Taken by whatever holds a request thread while it waits (an undo here, one passed
        #: to another replica, a read of another replica's event: eventread).
        self.gate = self._running
        #: With several replicas (Redis): an event held by another replica is undone there.
        self.relay: Relay | None = None

    def undo(self, uuid: str, by: str | None = None) -> dict[str, Any]:
        """Undo event `uuid` as `by`; the answer: {"uuid", "outcome", "by", "at",
        "actions": [{"action", "target", "outcome", "reason"?}]}. `outcome` is `undone`,
        `already-undone` (an earlier undo did it all) or `failed` (an action's undo failed:
        undo again). Raises UndoRefused (404 unknown, 409 not finished or being undone,
        429 as many undos running in this process as it allows; with several replicas, 503
        when Redis cannot say which holds the event, 504 when that one did not answer)."""
        by = check_by(by)
        try:
            return self.undo_here(uuid, by)
        except UndoRefused as exc:
            if exc.status != 404 or self.relay is None:
                raise
            refused = exc
        # Waiting on another replica holds a request thread too.
        if not self.gate.acquire(blocking=False):
            raise UndoRefused(429, "as many requests as this process lets wait are waiting "
                              "(undos, or reads of another replica's events); try again")
        try:
            return relayed_undo(self.relay, uuid, by, refused)
        finally:
            self.gate.release()

    def undo_here(self, uuid: str, by: str | None = None) -> dict[str, Any]:
        """`undo` of an event this replica holds (404 for any other)."""
        by = check_by(by)
        recorded = self.store.lookup(uuid)
        if recorded is None:
            raise UndoRefused(404, f"no event {clipped(uuid, 128)} (never received, or past "
                              "retention)")
        if recorded.state not in ("done", "failed"):
            raise UndoRefused(409, f"event {clipped(uuid, 128)} is still {recorded.state}: "
                              "undo it once its actions have run")
        if not self._running.acquire(blocking=False):
            raise UndoRefused(429, "another undo is running in this process (an undo holds a "
                              "request thread while it calls the API); try again in a moment")
        try:
            return self._undo_locked(uuid, recorded, by)
        finally:
            self._running.release()

    def _undo_locked(self, uuid: str, recorded: Recorded, by: str) -> dict[str, Any]:
        token = self._lock(uuid)
        try:
            recorded = self.store.lookup(uuid) or recorded  # undos finished while we waited
            results = [self._undo_one(stored, recorded.undos) for stored in recorded.outcomes]
            record = undo_record(results, by, self.clock(), bool(recorded.undos))
            self.store.record_undo(recorded.id, record)
        finally:
            self._unlock(uuid, token)
        self._tell(recorded, results, record)
        return {"uuid": uuid, **record}

    def _lock(self, uuid: str) -> str:
        """One undo of an event at a time, across replicas sharing Redis: two at once would
        both find the labels ours and both put them back, and both say so."""
        try:
            return acquire(self.shared, f"undo:{uuid}", LOCK_SECONDS, self.lock_wait)
        except Contended:
            raise UndoRefused(409, f"event {clipped(uuid, 128)} is being undone already") \
                from None
        except Exception as exc:  # noqa: BLE001 - e.g. Redis down: say so, not a 500
            raise UndoRefused(503, f"cannot take the undo lock: {type(exc).__name__}") \
                from None

    def _unlock(self, uuid: str, token: str) -> None:
        try:
            self.shared.unlock(f"undo:{uuid}", token)
        except Exception as exc:  # noqa: BLE001 - the lock then just expires
            logger.warning("cannot release the undo lock of %s (%s)", clipped(uuid),
                           type(exc).__name__)

    def _undo_one(self, stored: Mapping[str, Any],
                  undos: list[dict[str, Any]]) -> ActionUndo:
        name, where = stored.get("action", "?"), dict(stored.get("target") or {})
        slot = stored.get("slot")

        def said(outcome: str, reason: str | None, involved: ObjectRef | None = None):
            return ActionUndo(name, where, outcome, reason, involved, slot)

        earlier = earlier_undo(undos, name, where, slot)
        if earlier is not None:
            return said(ALREADY_UNDONE, f"already undone by {earlier['by']} at {earlier['at']}")
        refusal = undo_refusal(stored, self.registry.get(name))
        if refusal:
            return said(NOT_UNDONE, refusal)
        if self.actions is None:
            return said(FAILED, self.idle_reason)
        result = self._call(self.actions[name], stored)
        return said(_OUTCOMES.get(result.outcome, FAILED), result.reason, result.involved)

    def _call(self, action: Action, stored: Mapping[str, Any]) -> Result:
        target = stored_target(stored)
        try:
            return self.retry.call(lambda: action.undo(target, stored["details"]))
        except Exception as exc:  # noqa: BLE001 - one failed undo must not stop the others
            return Result(Outcome.FAILED, api_failure(exc))

    def _tell(self, recorded: Recorded, results: list[ActionUndo],
              record: dict[str, Any]) -> None:
        """The log record, the audit Events and the Slack message. Never raises."""
        event = _event_of(recorded)
        logger.info("undo uuid=%s by=%s outcome=%s actions=%s", recorded.key,
                    clipped(record["by"]), record["outcome"],
                    [(r.action, r.outcome) for r in results],
                    extra={"undo": {"uuid": recorded.key, "rule": clipped(event.rule), **record}})
        if self.recorder is not None:
            for result in results:
                if result.outcome == UNDONE and result.involved is not None:
                    self.recorder.create(core_event(
                        result.involved, REASON, result.action,
                        undo_message(event, result, record["by"]),
                        self.recorder.instance, self.recorder.now(), kind="Normal"),
                        f"the undo of {result.action} (uuid={recorded.key})")
        worth_saying = not recorded.undos or any(r.outcome in (UNDONE, FAILED) for r in results)
        if self.notifier is not None and worth_saying:
            self.notifier.send_undo(event, {"uuid": recorded.key, **record})


def check_by(by: Any) -> str:
    """Who asks: a short name ("anonymous" when not given); else UndoRefused 400."""
    if by is None:
        return "anonymous"
    if not isinstance(by, str) or not by.strip() or len(by) > BY_LIMIT \
            or not by.isprintable():
        raise UndoRefused(400, f"by: must be a name of 1 to {BY_LIMIT} printable characters")
    return by.strip()


def stored_target(stored: Mapping[str, Any]) -> Target:
    where = stored.get("target") or {}
    return Target(where.get("namespace"), where.get("pod"), where.get("node"))


def undo_refusal(stored: Mapping[str, Any], action: type[Action] | None) -> str | None:
    """Why a recorded outcome has nothing to undo, or None when its action can try. Pure."""
    outcome = stored.get("outcome")
    if outcome not in ACTED:
        reason = f": {stored['reason']}" if stored.get("reason") else ""
        return f"nothing was done ({outcome}{reason})"
    if action is None:
        return f"unknown action {stored.get('action')!r}"
    if action.reversal is None:
        return f"{action.name} cannot be undone"
    if not stored.get("details"):
        return "no undo details were recorded (acted on by an older version)"
    return None


def earlier_undo(undos: list[dict[str, Any]], action: str, target: Mapping[str, str],
                 slot: str | None) -> dict[str, Any] | None:
    """The earlier undo (its `by` and `at`) that put this action back, or None. Pure."""
    for undo in undos:
        for done in undo.get("actions", []):
            same = done.get("slot") == slot if slot else (
                done.get("action") == action and done.get("target") == target)
            if same and done.get("outcome") in (UNDONE, ALREADY_UNDONE):
                return undo
    return None


def undo_record(results: list[ActionUndo], by: str, now: float,
                undone_before: bool) -> dict[str, Any]:
    """What the journal keeps of one undo, and the HTTP answer says. Pure."""
    if any(r.outcome == FAILED for r in results):
        outcome = FAILED
    elif not any(r.outcome in (UNDONE, ALREADY_UNDONE) for r in results):
        outcome = NOTHING
    elif undone_before and not any(r.outcome == UNDONE for r in results):
        outcome = ALREADY_UNDONE
    else:
        outcome = UNDONE
    at = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")
    return {"outcome": outcome, "by": by, "at": at,
            "actions": [r.to_dict() for r in results]}


def undo_message(event: Event, result: ActionUndo, by: str) -> str:
    """The audit Event's message for one action undone. Pure."""
    reason = f" ({result.reason})" if result.reason else ""
    return (f"{result.action} undone by {by}{reason}; Falco rule {event.rule!r}, "
            f"Falco event {event.uuid}")


def _event_of(recorded: Recorded) -> Event:
    try:
        return parse_event(recorded.body)
    except EventError:  # validated at intake; only a corrupted row gets here
        return Event(uuid=recorded.key, rule="(unreadable event)",
                     priority=Priority.INFORMATIONAL, source="unknown", output_fields={})
