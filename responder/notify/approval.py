"""The Slack message of an event awaiting approval, and its updates in place: a pure builder.

While the event waits, the message lists each action with its target and pre-check, and
carries Approve and Reject buttons (Block Kit, each button's value the event uuid). Once
decided, the same message says who decided, when, and each outcome. Buttons are found by
`action_id`: the interactions endpoint dispatches on it, so one more button is one more
entry there and here."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ..approvals import APPROVED, REJECTED, TIMED_OUT, iso
from ..events import Event
from ..executor import ActionReport
from .config import USER_ID
from .message import (
    COLOURS,
    FIELD_LIMIT,
    _code,
    _fields,
    _mrkdwn,
    _section,
    _where,
    cut_escaped,
    escape_mrkdwn,
    message_target,
    offers_undo,
    outcome_text,
    undo_button,
)

APPROVE, REJECT = "approve", "reject"
BLOCK_ID = "falco-responder-approval"
LINES_LIMIT = 2900


def build_approval_message(event: Event, record: Mapping[str, Any],
                           reports: Sequence[ActionReport] = (),
                           interactive: bool = True,
                           undoable: Collection[str] = ()) -> dict[str, Any]:
    """chat.postMessage / chat.update arguments for an approval. Pure.

    `record` is the journal's approval record; `reports` the outcomes known so far (those
    of rules that did not wait, or every outcome once acted on). Approve and Reject only
    while nobody has decided, Undo once an action of a kind in `undoable` (the actions
    that declare a reversal) has changed the cluster; buttons only when Slack can call
    back (`interactive`)."""
    verdict = record.get("verdict")
    target = message_target(event, reports)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "fields": _fields(event, target, record.get("rules", []))}]
    cmdline = event.field("proc.cmdline")
    if cmdline is not None:
        blocks.append(_section("*Command line*\n" + _code(str(cmdline), 500)))
    blocks.append(_section(status_text(record, event.uuid, interactive)))
    blocks.append(_section(actions_text(record, reports)))
    if interactive and not verdict:
        blocks.append(buttons(event.uuid))
    elif interactive and offers_undo(reports, undoable):
        blocks.append(undo_button(event.uuid))
    blocks.append({"type": "context", "elements": [_mrkdwn(
        f"uuid {cut_escaped(event.uuid, 64)} · requested {iso(record.get('requested'))}")]})
    text = headline(event, record, target)
    return {"text": text, "attachments": [{"color": COLOURS[event.priority], "fallback": text,
                                           "blocks": blocks}]}


def buttons(uuid: str) -> dict[str, Any]:
    """The Approve and Reject buttons; the value names the event (Slack echoes it)."""
    def button(action_id: str, label: str, style: str) -> dict[str, Any]:
        return {"type": "button", "action_id": action_id, "style": style, "value": uuid,
                "text": {"type": "plain_text", "text": label}}
    return {"type": "actions", "block_id": BLOCK_ID,
            "elements": [button(APPROVE, "Approve", "primary"),
                         button(REJECT, "Reject", "danger")]}


def headline(event: Event, record: Mapping[str, Any], target: Any) -> str:
    verdict = record.get("verdict")
    state = {None: "approval needed", APPROVED: "approved", REJECTED: "rejected",
             TIMED_OUT: "approval timed out"}[verdict["decision"] if verdict else None]
    where = _where(target)
    actions = ", ".join(p["action"] for p in record.get("planned", []))
    return (f"[{event.priority.label}] {cut_escaped(event.rule, FIELD_LIMIT)}"
            f"{' on ' + where if where else ''}: {state} ({escape_mrkdwn(actions)})")


def status_text(record: Mapping[str, Any], uuid: str, interactive: bool) -> str:
    """Who decided and when, or until when the actions wait."""
    verdict = record.get("verdict")
    if not verdict:
        then = "run anyway" if record.get("on_timeout") == "run" else "be skipped"
        text = (f":hourglass: *Waiting for approval* until {iso(record.get('deadline'))}; "
                f"with no decision by then the actions {then}.")
        if not interactive:
            text += (f"\nApprove or reject over HTTP: `responder approve "
                     f"{cut_escaped(uuid, 64)} --to URL` (or `reject`).")
        return text
    at = iso(verdict.get("at"))
    if verdict.get("via") == "timeout":
        if verdict["decision"] == APPROVED:
            return (f":alarm_clock: *No decision in time*: acted as approved at {at} "
                    "(on_timeout: run).")
        return f":alarm_clock: *Approval timed out* at {at}: the actions were skipped."
    mark = ":white_check_mark:" if verdict["decision"] == APPROVED else ":no_entry:"
    return f"{mark} *{verdict['decision'].capitalize()}* by {who(verdict)} at {at}."


def who(verdict: Mapping[str, Any]) -> str:
    """The approver: a Slack mention with the name, or the HTTP approver's name."""
    name = cut_escaped(str(verdict.get("by")), 128)
    user_id = verdict.get("user_id")
    if verdict.get("via") == "slack" and isinstance(user_id, str) and USER_ID.match(user_id):
        return f"<@{user_id}> ({name})"
    if verdict.get("via") == "console":
        return f"{name} (console)" if name != "console" else name
    return f"{name} (over HTTP)" if verdict.get("via") == "http" else name


def actions_text(record: Mapping[str, Any], reports: Sequence[ActionReport]) -> str:
    """Each action with its target and what came of it (or its pre-check while waiting)."""
    waiting = {(p["table_rule"], p["action"]): p for p in record.get("planned", [])}
    verdict = record.get("verdict")
    lines = [_report_line(r, waiting) for r in reports]
    if not verdict:
        lines += [_planned_line(p, "awaiting approval") for p in record.get("planned", [])]
    elif not reports:  # decided a moment ago: the outcomes follow once the worker acted
        then = "acting now" if verdict["decision"] == APPROVED else "not run"
        lines += [_planned_line(p, then) for p in record.get("planned", [])]
    text = "*Actions*"
    for shown, line in enumerate(lines):
        if len(text) + len(line) > LINES_LIMIT:
            return text + f"\n… and {len(lines) - shown} more"
        text += "\n" + line
    return text


def _report_line(report: ActionReport, waiting: Mapping) -> str:
    target = report.target.describe(report.decision.target_keys)
    key = (report.decision.table_rule, report.decision.action)
    tag = "" if key in waiting else " (no approval needed)"
    return (f"• `{escape_mrkdwn(report.decision.action)}` on {_target_text(target)}{tag}: "
            f"{outcome_text(report.result)}")


def _planned_line(planned: Mapping[str, Any], state: str) -> str:
    check = planned.get("check")
    if state == "awaiting approval":
        state += f" ({'would be skipped now: ' + cut_escaped(check, 300) if check else 'ready'})"
    return (f"• `{escape_mrkdwn(planned['action'])}` on {_target_text(planned['target'])} "
            f"({escape_mrkdwn(planned['table_rule'])}): {state}")


def _target_text(target: Mapping[str, Any]) -> str:
    parts = [f"{k} {v}" for k, v in target.items() if v]
    return cut_escaped(", ".join(parts) or "no target", FIELD_LIMIT)
