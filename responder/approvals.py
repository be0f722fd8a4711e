"""A person in the loop: which decisions wait for approval, the approval record the journal
keeps for such an event, and the verdicts (approve, reject, timeout) that end the wait.

The record is plain JSON in the journal (`events.approval`):
`{"rules", "requested", "deadline", "on_timeout", "planned", "verdict", "slack"}`, where
`planned` lists the waiting decisions with their pre-check, `verdict` is None until someone
(or the timeout) decides, and `slack` names the message to update in place."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .decisions import Decision, Plan
from .journal import AWAITING, EventStore
from .table import Approval, Table

if TYPE_CHECKING:
    from .relay import Relay

logger = logging.getLogger(__name__)
APPROVED, REJECTED, TIMED_OUT = "approved", "rejected", "timed-out"
VERDICTS = {"approve": APPROVED, "reject": REJECTED}
#: The state a verdict's answer names for an event held by another replica.
ELSEWHERE = "on-another-replica"
#: How long an HTTP approver's name may be: what a person or a tool calls itself, printable
#: (it goes into logs, Slack and Kubernetes Events; an undo's `by` is held to the same).
NAME_LIMIT = 128


class ApprovalError(ValueError):
    """A bad approve/reject request (HTTP 400)."""


def gated_decisions(table: Table, plan: Plan, live: bool) -> dict[int, Approval]:
    """The decisions of `plan` that must wait for approval, by index, with their rule's
    approval. Only what would change the cluster waits: a dry-run decision, one skipped
    at plan time, or a responder without a cluster (`live` False) runs at once."""
    if not live:
        return {}
    gated = {}
    for index, decision in enumerate(plan.decisions):
        approval = table.approval_of(decision.table_rule)
        if approval and not decision.dry_run and not decision.skip_reason:
            gated[index] = approval
    return gated


def approval_target(decision: Decision) -> str:
    """What one approval covers: the table rule and the target, as coalescing keys them."""
    target = decision.target
    return f"{decision.table_rule}|{target.namespace}|{target.pod or target.node}"


def new_record(gated: Mapping[int, Approval], planned: list[dict[str, Any]], now: float
               ) -> dict[str, Any]:
    """The approval record of an event starting to wait. With several rules waiting, the
    shortest timeout applies, and "skip" wins over "run": the safer of what they say."""
    approvals = list(gated.values())
    on_timeout = "skip" if any(a.on_timeout == "skip" for a in approvals) else "run"
    return {"rules": sorted({p["table_rule"] for p in planned}), "requested": now,
            "deadline": now + min(a.timeout_seconds for a in approvals),
            "on_timeout": on_timeout, "planned": planned, "verdict": None, "slack": None}


def human_verdict(decision: str, by: str, via: str, at: float,
                  user_id: str | None = None) -> dict[str, Any]:
    verdict = {"decision": decision, "by": by, "via": via, "at": at}
    if user_id:
        verdict["user_id"] = user_id
    return verdict


def timeout_verdict(record: Mapping[str, Any], now: float) -> dict[str, Any]:
    """What the deadline decides: `run` acts as if approved by "timeout"."""
    decision = APPROVED if record.get("on_timeout") == "run" else TIMED_OUT
    return {"decision": decision, "by": "timeout", "via": "timeout", "at": now}


def approver_text(verdict: Mapping[str, Any]) -> str:
    """Who decided, for logs, audit Events and Slack: `alice (Slack U123)`, `bob (HTTP)`,
    `carol (console)`."""
    via = verdict.get("via")
    if via == "timeout":
        return "timeout"
    if via == "slack":
        return f"{verdict.get('by')} (Slack {verdict.get('user_id')})"
    if via == "console":
        return console_text(verdict.get("by"))
    return f"{verdict.get('by')} (HTTP)"


def console_text(by: Any) -> str:
    """A console user: `alice (console)`, or `console` for one who gave no name."""
    return "console" if by in (None, "", "console") else f"{by} (console)"


def verdict_reason(verdict: Mapping[str, Any]) -> str | None:
    """The skip reason a verdict gives the waiting decisions; None when they may run."""
    if verdict["decision"] == REJECTED:
        return f"rejected by {approver_text(verdict)}"
    if verdict["decision"] == TIMED_OUT:
        return "approval timed out"
    return None


def audit_note(verdict: Mapping[str, Any]) -> str:
    """What a decision record and an audit Event say about the approval."""
    if verdict["decision"] == APPROVED:
        return f"approved by {approver_text(verdict)}"
    return verdict_reason(verdict) or verdict["decision"]


def public_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as GET /events/<uuid> shows it: times in ISO 8601, no internal slots."""
    verdict = record.get("verdict")
    view: dict[str, Any] = {
        "rules": record.get("rules", []), "requested": iso(record.get("requested")),
        "deadline": iso(record.get("deadline")), "on_timeout": record.get("on_timeout"),
        "decision": verdict["decision"] if verdict else None,
    }
    if verdict:
        view.update(by=verdict.get("by"), via=verdict.get("via"), at=iso(verdict.get("at")))
        if verdict.get("user_id"):
            view["user_id"] = verdict["user_id"]
    if record.get("slack"):
        view["slack"] = record["slack"]
    return view


def awaiting_decisions(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The waiting decisions, as GET /events/<uuid> lists them beside the recorded ones."""
    shown = []
    for planned in record.get("planned", []):
        entry = {"action": planned["action"], "target": planned["target"],
                 "outcome": "awaiting-approval", "table_rule": planned["table_rule"]}
        if planned.get("check"):
            entry["reason"] = f"would be skipped now: {planned['check']}"
        shown.append(entry)
    return shown


def iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def approver_name(body: Any) -> str:
    """The approver an HTTP request names (`{"by": "..."}`); ApprovalError otherwise."""
    if not isinstance(body, dict) or "by" not in body:
        raise ApprovalError('the body must be JSON {"by": "<approver name>"}')
    name = body["by"]
    if not isinstance(name, str) or not name.strip():
        raise ApprovalError('"by" must be a non-empty string naming the approver')
    name = name.strip()
    if len(name) > NAME_LIMIT or not name.isprintable():
        raise ApprovalError(f'"by" must be at most {NAME_LIMIT} printable characters (no '
                            "control or format characters, line separators or surrogates)")
    return name


class Approvals:
    """Approve or reject an event awaiting approval: one commit gives the verdict and makes
    the event due; the worker is woken and acts (checks run again first). Used by the HTTP
    routes and the Slack interactions alike.

    The Slack message is updated by the worker once it has acted (who decided, when, each
    outcome), not here: the worker may be another process, and one sender per message keeps
    the updates in order (an earlier "acting now" can never land after the outcomes)."""

    def __init__(self, store: EventStore, wake: Callable[[], None],
                 counted: Callable[[dict[str, Any]], None] = lambda verdict: None,
                 relay: Relay | None = None):
        self.store = store
        self.wake = wake
        #: Told each verdict given (the responder_approvals_total metric).
        self.counted = counted
        #: With several replicas (Redis): verdicts for another replica's events go through
        #: it, and ours take the same first-verdict key, so exactly one verdict wins.
        self.relay = relay

    def decide(self, uuid: str, verb: str, by: str, via: str,
               user_id: str | None = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body): 200 decided (here, or recorded for the replica holding
        the event), 404 unknown, 409 not awaiting, 503 another replica's event while the
        shared Redis cannot be reached."""
        verdict = human_verdict(VERDICTS[verb], by, via, self.store.clock(), user_id)
        here = self.store.approval_state(uuid)
        if here is None:
            if self.relay is None:
                return 404, {"error": f"no event {uuid[:128]} (never received, or past "
                             "retention)"}
            return self._decide_elsewhere(uuid, verdict)
        state, record = here
        if state == AWAITING and record and not record.get("verdict"):
            won, first = self._first_verdict(uuid, verdict, record["deadline"])
            if not won:
                self.wake()  # the worker applies the verdict that won
                return 409, conflict_body(uuid, state, {**record, "verdict": first})
        found = self.store.decide(uuid, verdict)
        if found is None:
            return 404, {"error": f"no event {uuid[:128]} (never received, or past retention)"}
        decided, state, record = found
        if not decided:
            return 409, conflict_body(uuid, state, record)
        logger.warning("event %s %s by %s", uuid, verdict["decision"], approver_text(verdict))
        self.counted(verdict)
        self.wake()
        return 200, {"uuid": uuid, "state": state, "approval": public_view(record or {})}

    def _first_verdict(self, uuid: str, verdict: dict[str, Any],
                       deadline: float) -> tuple[bool, dict[str, Any]]:
        """Our verdict for our own event through the shared first-verdict key; with Redis
        down, the verdict is given here alone (the event is ours: no one else acts on it)."""
        if self.relay is None:
            return True, verdict
        import redis

        try:
            won = self.relay.first_verdict(uuid, verdict, deadline)
        except redis.RedisError as exc:
            self.relay.trouble.failed(exc)
            return True, verdict
        self.relay.trouble.passed()
        return won

    def _decide_elsewhere(self, uuid: str, verdict: dict[str, Any]
                          ) -> tuple[int, dict[str, Any]]:
        """A verdict for an event another replica holds: recorded in Redis (first wins) for
        that replica's worker to apply, as it applies its own."""
        import redis

        assert self.relay is not None
        try:
            shown = self.relay.awaiting(uuid)
            if shown is None:
                return 404, {"error": f"no event {uuid[:128]} (never received, past retention, "
                             "or not awaiting approval on any replica)"}
            won, first = self.relay.first_verdict(uuid, verdict, float(shown["deadline"]))
        except redis.RedisError as exc:
            return 503, {"error": f"event {uuid[:128]} is not on this replica, and the shared "
                         f"Redis that passes verdicts to the replica holding it cannot be "
                         f"reached ({type(exc).__name__}); try again", "uuid": uuid}
        record = {"rules": shown.get("rules", []), "deadline": shown.get("deadline"),
                  "verdict": first}
        if not won:
            return 409, conflict_body(uuid, ELSEWHERE, record)
        logger.warning("event %s %s by %s; passed on to replica %s, which holds it", uuid,
                       verdict["decision"], approver_text(verdict), shown.get("owner"))
        return 200, {"uuid": uuid, "state": AWAITING, "replica": shown.get("owner"),
                     "relayed": True, "approval": public_view(record),
                     "note": "verdict recorded; the replica holding the event acts on it"}


def conflict_body(uuid: str, state: str, record: Mapping[str, Any] | None) -> dict[str, Any]:
    """Why an event cannot be approved or rejected now, with its current state."""
    verdict = (record or {}).get("verdict")
    if verdict:
        why = ("approval timed out" if verdict["decision"] == TIMED_OUT
               else f"already {verdict['decision']} by {approver_text(verdict)}")
    else:
        why = "not awaiting approval"
    body = {"error": f"event {uuid[:128]}: {why}", "uuid": uuid, "state": state}
    if record:
        body["approval"] = public_view(record)
    return body
