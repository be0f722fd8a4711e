"""`POST /slack/interactions`: Slack's call when someone clicks a button on our message.

Authenticated by Slack's signature (the app's signing secret, slack-sdk's verifier: the
timestamp window, a constant-time compare), not by the bearer token Slack cannot send.
Handlers are found by the button's `action_id`: adding a button is one entry in
`SlackInteractions.handlers`."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from slack_sdk.signature import Clock, SignatureVerifier

from .approvals import Approvals
from .errors import UndoRefused
from .logs import clipped

logger = logging.getLogger(__name__)
_ID = re.compile(r"^[A-Z0-9]{2,40}$")
VALUE_LIMIT = 256
#: How long a Slack undo click waits for its undo before answering "started" (Slack wants
#: an answer within 3 s, and the request must get there).
ANSWER_WITHIN_SECONDS = 2.0


class InteractionError(ValueError):
    """A signed request whose payload is not a button click as Slack sends it (400)."""


@dataclass(frozen=True)
class Click:
    """One button click: who, on which message, which button, its value."""

    action_id: str
    value: str
    user_id: str
    user_name: str
    channel: str
    message_ts: str | None


def parse_click(body: bytes) -> Click:
    """The click in a block_actions payload (form-encoded `payload=<json>`). Pure."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, RecursionError):
        raise InteractionError("the body must be form-encoded payload=<JSON>, as Slack "
                               "sends interactions") from None
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        raise InteractionError("payload: only block_actions (button clicks) are handled")
    user, actions = payload.get("user"), payload.get("actions")
    channel = payload.get("channel") if isinstance(payload.get("channel"), dict) else {}
    message = payload.get("message") if isinstance(payload.get("message"), dict) else {}
    if not isinstance(user, dict) or not _is_id(user.get("id")):
        raise InteractionError("payload.user.id: missing or not a Slack user id")
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
        raise InteractionError("payload.actions: must be a non-empty list")
    action = actions[0]
    if not isinstance(action.get("action_id"), str) or not _is_text(action.get("value")):
        raise InteractionError("payload.actions[0]: needs a string action_id and value")
    if not _is_id(channel.get("id")):
        raise InteractionError("payload.channel.id: missing or not a Slack channel id")
    name = user.get("name") or user.get("username") or user["id"]
    # Said in logs, Slack and Kubernetes Events: printable, as an HTTP approver's must be.
    name = "".join(c if c.isprintable() else "?" for c in str(name)[:128])
    return Click(action["action_id"], action["value"], user["id"], name, channel["id"],
                 message.get("ts") if isinstance(message.get("ts"), str) else None)


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_ID.match(value))


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= VALUE_LIMIT


class SlackInteractions:
    """Verifies, parses and dispatches Slack's interaction requests."""

    def __init__(self, signing_secret: str, approvers: tuple[str, ...], approvals: Approvals,
                 tell: Callable[[str, str, str], None], clock: Clock | None = None,
                 undo: Callable[[str, str], dict[str, Any]] | None = None,
                 undo_limit: int = 1, answer_within: float = ANSWER_WITHIN_SECONDS):
        self._verifier = SignatureVerifier(signing_secret, clock or Clock())
        self.approvers = frozenset(approvers)
        self.approvals = approvals
        #: (channel, user, text): a message only the clicking user sees.
        self.tell = tell
        #: (uuid, by) -> the undo's answer: `Undoer.undo`, which raises UndoRefused.
        self.undo = undo
        #: Undos this process runs for clicks at once (the Undoer's own bound).
        self.undo_limit = max(1, undo_limit)
        self._undos = threading.BoundedSemaphore(self.undo_limit)
        #: Slack shows an error unless answered within 3 s: an undo still running then
        #: (a slow API, or another replica's event) is answered "started", told when done.
        self.answer_within = answer_within
        self.handlers: dict[str, Callable[[Click], tuple[int, dict[str, Any]]]] = {
            "approve": lambda click: self._decide(click, "approve"),
            "reject": lambda click: self._decide(click, "reject"),
        }
        if undo is not None:
            self.handlers["undo"] = self._undo

    def __repr__(self) -> str:
        return "SlackInteractions(signing_secret=***)"

    def handle(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body). Nothing is done unless the signature holds."""
        if not self.verified(body, headers):
            logger.warning("Slack interaction refused: bad or missing signature, or a "
                           "timestamp outside the 5-minute window (a replay?)")
            return 401, {"error": "bad or missing Slack signature, or a stale timestamp"}
        click = parse_click(body)
        handler = self.handlers.get(click.action_id)
        if handler is None:
            raise InteractionError(f"payload.actions[0].action_id: unknown action "
                                   f"{clipped(click.action_id, 64)!r} (known: "
                                   f"{', '.join(sorted(self.handlers))})")
        if self.approvers and click.user_id not in self.approvers:
            logger.warning("Slack user %s (%s) clicked %s on event %s but is not in "
                           "RESPONDER_SLACK_APPROVERS: refused", click.user_id,
                           click.user_name, click.action_id, clipped(click.value, 64))
            self.tell(click.channel, click.user_id, "You are not allowed to approve, "
                      "reject or undo falco-responder actions (not in "
                      "RESPONDER_SLACK_APPROVERS); nothing was done.")
            return 200, {"ok": False, "error": "user not in RESPONDER_SLACK_APPROVERS"}
        return handler(click)

    def verified(self, body: bytes, headers: Mapping[str, str]) -> bool:
        try:
            return self._verifier.is_valid_request(body, headers)
        # A timestamp that is not a number (ValueError) or too large for a float
        # (OverflowError); a signature that is not ASCII, which hmac cannot compare
        # (TypeError): not Slack's, and anyone can send them before the signature holds.
        except (ValueError, UnicodeDecodeError, OverflowError, TypeError):
            return False

    def _decide(self, click: Click, verb: str) -> tuple[int, dict[str, Any]]:
        status, body = self.approvals.decide(click.value, verb, click.user_name, "slack",
                                             click.user_id)
        if status != 200:
            # Slack shows an error for anything but 200: the user hears why instead.
            self.tell(click.channel, click.user_id, f"Not done: {body['error']}.")
            return 200, {"ok": False, **body}
        return 200, {"ok": True, **body}

    def _undo(self, click: Click) -> tuple[int, dict[str, Any]]:
        # The name is Slack's display name, which anyone may change: the id makes it sure.
        name = "".join(c if c.isprintable() else "?" for c in click.user_name[:72])
        by = f"{name} (Slack {click.user_id})"
        if not self._undos.acquire(blocking=False):
            refused = UndoRefused(429, "as many undos are running in this process as it "
                                  "allows; try again in a moment")
            return self._undo_refused(click, refused)
        answered: dict[str, Any] = {}
        handed_off, lock, done = [False], threading.Lock(), threading.Event()

        def run() -> None:
            result = self._run_undo(click, by)
            with lock:  # who tells: the request if it still waits, else this thread
                answered.update(result)
                tell_here = handed_off[0]
            done.set()
            if tell_here:
                self._tell_undo(click, answered)

        threading.Thread(target=run, name="slack-undo", daemon=True).start()
        done.wait(self.answer_within)
        with lock:
            if not answered:
                handed_off[0] = True
                return 200, {"ok": True, "started": True, "uuid": click.value,
                             "note": "undo started; the result is told when done"}
        return self._tell_undo(click, answered)

    def _run_undo(self, click: Click, by: str) -> dict[str, Any]:
        """The undo's answer or refusal; the bound's place is given back here."""
        try:
            return {"answer": self.undo(click.value, by)}
        except UndoRefused as exc:
            return {"refused": exc}
        except Exception as exc:  # noqa: BLE001 - the user must hear of it
            logger.exception("undo of event %s for a Slack click failed",
                             clipped(click.value, 64))
            return {"refused": UndoRefused(500, f"internal error ({type(exc).__name__}); "
                                           "see the responder's log")}
        finally:
            self._undos.release()

    def _tell_undo(self, click: Click, answered: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "refused" in answered:
            return self._undo_refused(click, answered["refused"])
        self.tell(click.channel, click.user_id, undo_summary(answered["answer"]))
        return 200, {"ok": True, **answered["answer"]}

    def _undo_refused(self, click: Click, exc: UndoRefused) -> tuple[int, dict[str, Any]]:
        self.tell(click.channel, click.user_id, f"Not undone: {exc}.")
        return 200, {"ok": False, "error": str(exc), "status": exc.status}


def undo_summary(answer: Mapping[str, Any]) -> str:
    """What the clicking user is told of their undo: the whole outcome, then each action."""
    lines = [f"Undo of event {clipped(str(answer.get('uuid')), 64)}: {answer.get('outcome')}."]
    for act in answer.get("actions", []):
        target = "/".join(str(v) for v in (act.get("target") or {}).values()) or "no target"
        reason = f" ({act['reason']})" if act.get("reason") else ""
        lines.append(f"• {act.get('action')} on {target}: {act.get('outcome')}{reason}")
    return clipped("\n".join(lines), 2900)
