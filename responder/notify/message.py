"""The Slack message about one event's response, as Block Kit: a pure builder.

Every piece of event text is escaped (and cut to Slack's limits) here, so nothing an
attacker controls can mention a channel or render a disguised link."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ..actions import Outcome, Result, Target
from ..decisions import resolve_target
from ..events import Event, Priority
from ..executor import ActionReport

#: The Undo button's action_id: the interactions endpoint dispatches on it.
UNDO = "undo"
UNDO_BLOCK_ID = "falco-responder-undo"

#: Attachment colour bar by severity: reds for Critical and above, orange for Error,
#: amber for Warning, blue for Notice, green for Informational, grey for Debug.
COLOURS = {
    Priority.EMERGENCY: "#7b0000", Priority.ALERT: "#a80000", Priority.CRITICAL: "#d40000",
    Priority.ERROR: "#e8590c", Priority.WARNING: "#f2b807", Priority.NOTICE: "#2f8fd8",
    Priority.INFORMATIONAL: "#2eb67d", Priority.DEBUG: "#9e9e9e",
}
ALERT_COLOUR = "#e8590c"
SECTION_LIMIT = 3000  # Slack rejects a section text longer than this
FIELD_LIMIT = 300  # Slack allows 2000 per field; a value longer than this is noise
REASON_LIMIT = 300
CMDLINE_LIMIT = 1000
OUTPUT_LIMIT = 1500
CUT_MARK = "… [cut]"
_MRKDWN = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# In a code block, a zero-width space after each backtick keeps "```" in the data from
# closing the block early.
_CODE = {**_MRKDWN, "`": "`\u200b"}


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack mrkdwn treats as control: & < >.

    Without this, a process name like `<!channel>` or `<http://x|y>` would mention
    everyone or render a disguised link.
    """
    return "".join(_MRKDWN.get(c, c) for c in text)


def cut_escaped(text: str, limit: int, table: Mapping[str, str] = _MRKDWN) -> str:
    """Escape `text` and keep at most `limit` characters, never cutting an escape in half."""
    pieces = [table.get(c, c) for c in text]
    if sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    budget, kept = limit - len(CUT_MARK), []
    for piece in pieces:
        budget -= len(piece)
        if budget < 0:
            break
        kept.append(piece)
    return "".join(kept) + CUT_MARK


def outcome_text(result: Result, with_reason: bool = True) -> str:
    """How an action's outcome reads in Slack: done, already gone, dry-run, skipped, FAILED."""
    reason = cut_escaped(result.reason, REASON_LIMIT) if result.reason and with_reason else ""
    if result.outcome == Outcome.DONE:
        return "done"
    if result.outcome == Outcome.ALREADY_DONE:
        return cut_escaped(result.reason, REASON_LIMIT) if result.reason else "already done"
    if result.outcome == Outcome.WOULD_RUN:
        return f"dry-run ({reason})" if reason and reason != "dry-run" else "dry-run"
    label = {Outcome.SKIPPED: "skipped", Outcome.COALESCED: "coalesced"}.get(
        result.outcome, "FAILED")
    return f"{label}: {reason}" if reason else label


def message_target(event: Event, reports: Sequence[ActionReport]) -> Target:
    """Where the event happened; the node comes from the reports when the executor looked it up."""
    target = resolve_target(event)
    node = next((r.target.node for r in reports if r.target.node), target.node)
    return dataclasses.replace(target, node=node)


def build_slack_message(event: Event, reports: Sequence[ActionReport],
                        matched: Sequence[str], count: int = 1,
                        undoable: Collection[str] = ()) -> dict[str, Any]:
    """The keyword arguments for WebhookClient.send / WebClient.chat_postMessage. Pure.

    `text` is the notification and fallback line; the details are Block Kit blocks inside
    one attachment, because only attachments carry the severity colour bar. `count` is how
    many events this message stands for (more than 1 for an aggregation summary). A message
    about one event carries an Undo button when an action of a kind in `undoable` changed
    the cluster (the sender passes them only when Slack can call back).
    """
    target = message_target(event, reports)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "fields": _fields(event, target, matched)}]
    cmdline = event.field("proc.cmdline")
    if cmdline is not None:
        blocks.append(_section("*Command line*\n" + _code(str(cmdline), CMDLINE_LIMIT)))
    if event.output:
        blocks.append(_section("*Falco output*\n" + _code(event.output, OUTPUT_LIMIT)))
    blocks.append(_section(_actions_text(reports)))
    if count == 1 and offers_undo(reports, undoable):
        blocks.append(undo_button(event.uuid))
    blocks.append({"type": "context", "elements": [_mrkdwn(_context_text(event, count))]})
    text = _headline(event, target, reports, count)
    return {"text": text,
            "attachments": [{"color": COLOURS[event.priority], "fallback": text,
                             "blocks": blocks}]}


def undo_button(uuid: str) -> dict[str, Any]:
    """The Undo button, behind Slack's confirmation dialog: one stray click must not put a
    contained pod back on the network."""
    confirm = {"title": {"type": "plain_text", "text": "Undo the response?"},
               "text": {"type": "mrkdwn", "text": "Labels are put back, an isolation lifted "
                        "and a cordon removed, where the responder set them. A deleted pod "
                        "stays deleted."},
               "confirm": {"type": "plain_text", "text": "Undo"},
               "deny": {"type": "plain_text", "text": "Cancel"}}
    return {"type": "actions", "block_id": UNDO_BLOCK_ID,
            "elements": [{"type": "button", "action_id": UNDO, "value": uuid,
                          "text": {"type": "plain_text", "text": "Undo"},
                          "confirm": confirm}]}


def offers_undo(reports: Sequence[ActionReport], undoable: Collection[str]) -> bool:
    """Whether an action of a kind that can be undone (`undoable`) changed the cluster."""
    return any(r.decision.action in undoable and not r.decision.dry_run
               and r.result.outcome in (Outcome.DONE, Outcome.ALREADY_DONE) for r in reports)


def build_alert_message(text: str, count: int = 1) -> dict[str, Any]:
    """A plain guardrail alert from the responder itself (e.g. a limit tripped). Pure."""
    body = f":warning: falco-responder: {cut_escaped(text, SECTION_LIMIT - 200)}"
    if count > 1:
        body += f" ({count} times since the previous message)"
    return {"text": body,
            "attachments": [{"color": ALERT_COLOUR, "fallback": body,
                             "blocks": [_section(body)]}]}


def _headline(event: Event, target: Target, reports: Sequence[ActionReport],
              count: int) -> str:
    times = f"{count}× " if count > 1 else ""
    where = _where(target)
    where = f" on {where}" if where else ""
    actions = ", ".join(f"{r.decision.action} {outcome_text(r.result, with_reason=False)}"
                        for r in reports) or "no action"
    return (f"[{event.priority.label}] {times}{cut_escaped(event.rule, FIELD_LIMIT)}"
            f"{where}: {actions}")


def _where(target: Target) -> str:
    if target.pod:
        return cut_escaped(f"pod {target.namespace}/{target.pod}", FIELD_LIMIT)
    if target.node:
        return cut_escaped(f"node {target.node}", FIELD_LIMIT)
    if target.namespace:
        return cut_escaped(f"namespace {target.namespace}", FIELD_LIMIT)
    return ""


def _fields(event: Event, target: Target, matched: Sequence[str]) -> list[dict[str, Any]]:
    values = [
        ("Falco rule", event.rule), ("Priority", event.priority.label),
        ("Namespace", target.namespace), ("Pod", target.pod), ("Node", target.node),
        ("Image", image_of(event)), ("Table rule", ", ".join(matched) or "none"),
    ]
    return [_mrkdwn(f"*{label}*\n{cut_escaped(value, FIELD_LIMIT)}")
            for label, value in values if value]


def image_of(event: Event) -> str | None:
    """The container image an event names, as `repository:tag` when Falco splits it."""
    repository, tag = event.field("container.image.repository"), event.field(
        "container.image.tag")
    if repository is not None:
        return f"{repository}:{tag}" if tag is not None else str(repository)
    image = event.field("container.image")
    if image is None:
        image = event.field("ka.req.pod.containers.image")
    if isinstance(image, list):
        return ", ".join(str(i) for i in image) or None
    return None if image is None else str(image)


def _actions_text(reports: Sequence[ActionReport]) -> str:
    header = "*Response*"
    if not reports:
        return f"{header}\nno action"
    lines = [f"• `{escape_mrkdwn(r.decision.action)}` ({escape_mrkdwn(r.decision.table_rule)})"
             f": {outcome_text(r.result)}{_digest_text(r.result)}" for r in reports]
    text = header
    for shown, line in enumerate(lines):
        more = f"\n… and {len(lines) - shown} more"
        if len(text) + 1 + len(line) + len(more) > SECTION_LIMIT:
            return text + more
        text += "\n" + line
    return text


def _digest_text(result: Result) -> str:
    """The digest an action kept (an evidence bundle's), and where, for the record."""
    details = result.details or {}
    digest = details.get("digest")
    if not digest:
        return ""
    where = details.get("location")
    where = f" at {cut_escaped(str(where), FIELD_LIMIT)}" if where else ""
    return f" · digest `{cut_escaped(str(digest), 100, _CODE)}`{where}"


def _context_text(event: Event, count: int) -> str:
    parts = [f"event time {cut_escaped(event.time or 'unknown', 64)}",
             f"uuid {cut_escaped(event.uuid, 64)}", f"source {cut_escaped(event.source, 64)}"]
    if event.hostname:
        parts.append(f"host {cut_escaped(event.hostname, 253)}")
    text = " · ".join(parts)
    if count > 1:
        text += (f"\n{count} events like this (same Falco rule, namespace and pod); "
                 "the latest is shown")
    return text


def _code(text: str, limit: int) -> str:
    return f"```{cut_escaped(text, limit, _CODE)}```"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(text)}


def _mrkdwn(text: str) -> dict[str, Any]:
    # verbatim: Slack must not turn event text into links or channel references by itself.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


#: The colour bar of an undo: green when everything asked for was put back, orange when an
#: action's undo failed (undo again).
UNDO_COLOURS = {"undone": "#2eb67d", "already-undone": "#2eb67d", "nothing-to-undo": "#8d8d8d",
                "failed": ALERT_COLOUR}


def build_undo_message(event: Event, undo: Mapping[str, Any]) -> dict[str, Any]:
    """The message saying what an undo (`responder.undo`'s record) put back and what it
    could not, action by action. Pure; `by` and every reason are escaped like event text."""
    target = resolve_target(event)
    where = _where(target)
    verdict = {"undone": "undone", "already-undone": "already undone",
               "nothing-to-undo": "nothing to undo (asked)",
               "failed": "undo FAILED for some actions"}.get(undo["outcome"], undo["outcome"])
    text = (f":leftwards_arrow_with_hook: {cut_escaped(event.rule, FIELD_LIMIT)}"
            f"{' on ' + where if where else ''}: {verdict} by "
            f"{cut_escaped(str(undo['by']), FIELD_LIMIT)}")
    lines = [f"• `{escape_mrkdwn(a['action'])}`: {_undo_text(a)}" for a in undo["actions"]]
    body = "*Undo*\n" + ("\n".join(lines) if lines else "no action was recorded")
    if len(body) > SECTION_LIMIT:
        body = body[:SECTION_LIMIT - len(CUT_MARK)] + CUT_MARK
    context = f"uuid {cut_escaped(str(undo['uuid']), 64)} · at {cut_escaped(str(undo['at']), 64)}"
    blocks = [_section(body), {"type": "context", "elements": [_mrkdwn(context)]}]
    return {"text": text,
            "attachments": [{"color": UNDO_COLOURS.get(undo["outcome"], ALERT_COLOUR),
                             "fallback": text, "blocks": blocks}]}


def _undo_text(action: Mapping[str, Any]) -> str:
    outcome = {"undone": "undone", "already-undone": "already undone",
               "not-undone": "not undone", "failed": "FAILED"}.get(action["outcome"],
                                                                   action["outcome"])
    reason = action.get("reason")
    return f"{outcome}: {cut_escaped(reason, REASON_LIMIT)}" if reason else outcome
