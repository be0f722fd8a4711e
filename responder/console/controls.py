"""The alert page's controls: the approval record and the undo history shown, and Approve,
Reject and Undo as forms that call what the HTTP endpoints call (`Approvals.decide`,
`Undoer.undo`), then redirect back to the alert with what came of it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from ..actions import Registry
from ..approvals import Approvals, approver_text, awaiting_decisions
from ..errors import UndoRefused
from ..journal import AWAITING
from ..undo import Undoer, earlier_undo, undo_refusal
from .guard import Guard
from .session import Session

FINISHED = ("done", "failed")
#: What the alert page says after a control, by the verdict or undo outcome.
PAST = {"approve": "approved", "reject": "rejected"}
DECIDED = {"approve": "Approved: the worker runs the actions now (checks run again first).",
           "reject": "Rejected: the waiting actions will be skipped."}


def approval_view(record: Mapping[str, Any] | None, state: str) -> dict[str, Any] | None:
    """The approval record as the alert page shows it (None: the event never waited). Pure."""
    if not record:
        return None
    verdict = record.get("verdict")
    view = {"rules": record.get("rules", []), "requested": record.get("requested"),
            "deadline": record.get("deadline"), "on_timeout": record.get("on_timeout"),
            "waiting": state == AWAITING and not verdict,
            "planned": awaiting_decisions(record), "verdict": None}
    if verdict:
        view["verdict"] = {"decision": verdict.get("decision"), "by": approver_text(verdict),
                           "via": verdict.get("via"), "at": verdict.get("at")}
    return view


def undoable(state: str, decisions: list[dict[str, Any]], undos: list[dict[str, Any]],
             registry: Registry) -> list[dict[str, Any]]:
    """The decisions an undo would put back now: the event finished, the action declares a
    reversal and changed the cluster (done or already-done, with details recorded), and no
    earlier undo put it back. Pure but for the registry lookup."""
    if state not in FINISHED:
        return []
    return [d for d in decisions
            if undo_refusal(d, registry.get(d.get("action", ""))) is None
            and earlier_undo(undos, d.get("action", ""), dict(d.get("target") or {}),
                             d.get("slot")) is None]


def undo_summary(answer: Mapping[str, Any]) -> str:
    """One line on what an undo did, for the page after the redirect."""
    counts: dict[str, int] = {}
    for action in answer.get("actions", []):
        counts[action["outcome"]] = counts.get(action["outcome"], 0) + 1
    parts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    return f"Undo by {answer.get('by')}: {answer.get('outcome')} ({parts or 'no actions'})."


class Controls:
    """What the control routes share: who acts, and the redirect back to the alert."""

    def __init__(self, guard: Guard, approvals: Approvals):
        self.guard = guard
        self.approvals = approvals

    def session(self) -> Session:
        # None only for a script with the bearer token: it acts as "console".
        return self.guard.session() or Session("")

    def back(self, uuid: str, ok: bool, text: str) -> Response:
        sessions = self.guard.sessions
        sealed = sessions.seal({"ok": ok, "text": text, "uuid": uuid}) if sessions else None
        return redirect(url_for("console.alert_page", uuid=uuid, said=sealed))

    def decide(self, uuid: str, verb: str) -> Response:
        status, body = self.approvals.decide(uuid, verb, self.session().name or "console",
                                             "console")
        if status != 200:
            return self.back(uuid, False, f"Not {PAST[verb]} ({status}): {body['error']}")
        return self.back(uuid, True, DECIDED[verb])


def add_controls(console: Blueprint, guard: Guard, approvals: Approvals,
                 undoer: Undoer) -> None:
    """The control routes under /ui/alerts/<uuid>/ (the guard checks the session and CSRF
    token of every POST before these run)."""
    controls = Controls(guard, approvals)

    @console.post("/alerts/<uuid>/approve")
    def alert_approve(uuid: str) -> Response:
        return controls.decide(uuid, "approve")

    @console.post("/alerts/<uuid>/reject")
    def alert_reject(uuid: str) -> Response:
        return controls.decide(uuid, "reject")

    @console.get("/alerts/<uuid>/undo")
    def alert_undo_confirm(uuid: str) -> Any:
        """The confirmation step: what would be put back, and the form that does it."""
        recorded = undoer.store.lookup(uuid)
        if recorded is None:
            return render_template("missing.html", uuid=uuid), 404
        actions = undoable(recorded.state, recorded.outcomes, recorded.undos,
                           undoer.registry)
        return render_template("undo.html", uuid=uuid, actions=actions,
                               state=recorded.state), 200

    @console.post("/alerts/<uuid>/undo")
    def alert_undo(uuid: str) -> Response:
        try:
            answer = undoer.undo(uuid, by=controls.session().by)
        except UndoRefused as exc:
            return controls.back(uuid, False, f"Not undone ({exc.status}): {exc}")
        return controls.back(uuid, answer["outcome"] != "failed", undo_summary(answer))


def said(guard: Guard, uuid: str) -> dict[str, Any] | None:
    """What the control just used on alert `uuid` said (from the redirect's signed query)."""
    if guard.sessions is None:
        return None
    data = guard.sessions.unseal(request.args.get("said"))
    return data if data and data.get("uuid") == uuid else None
