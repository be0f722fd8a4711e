"""Sending to Slack from a background thread, folding duplicates into one summary."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    RetryHandler,
)
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from ..actions import Outcome
from ..envvars import MASK
from ..events import Event
from ..executor import ActionReport
from .approval import build_approval_message
from .config import SlackConfig
from .message import (
    build_alert_message,
    build_slack_message,
    build_undo_message,
    message_target,
)
from .policy import ACTED, should_notify

logger = logging.getLogger(__name__)

class SendError(Exception):
    """Slack answered, but not with success; the message is safe to log."""


class _Sender(Protocol):
    def send(self, payload: Mapping[str, Any], update: Any = None) -> Any:
        """Post (or, where Slack allows, update the message `update` names); returns a
        handle naming the message for a later update, or None."""

    def tell(self, channel: str, user: str, text: str) -> None:
        """Send `text` to `user` alone in `channel`."""


def default_retry_handlers() -> list[RetryHandler]:
    """429: wait as long as Retry-After says, at most twice; a connection error or a 500/503:
    one retry after a short backoff. Timeouts are not retried (they already took long)."""
    return [RateLimitErrorRetryHandler(max_retry_count=2),
            ConnectionErrorRetryHandler(max_retry_count=1),
            ServerErrorRetryHandler(max_retry_count=1)]


class _WebhookSender:
    def __init__(self, config: SlackConfig, handlers: list[RetryHandler],
                 sdk_logger: logging.Logger):
        self.client = WebhookClient(config.webhook_url, timeout=config.timeout,  # type: ignore
                                    retry_handlers=handlers, logger=sdk_logger)

    def tell(self, channel: str, user: str, text: str) -> None:
        raise SendError("an incoming webhook cannot send a message to one user")

    def send(self, payload: Mapping[str, Any], update: Any = None) -> None:
        # Incoming webhooks cannot edit a message: a summary is always a new post.
        response = self.client.send(**payload)
        if response.status_code != 200 or response.body != "ok":
            raise SendError(f"HTTP {response.status_code}: {(response.body or '')[:200]}")


class _WebApiSender:
    def __init__(self, config: SlackConfig, handlers: list[RetryHandler],
                 sdk_logger: logging.Logger):
        self.channel = config.channel
        self.client = WebClient(token=config.token, base_url=config.api_url,
                                timeout=config.timeout,  # type: ignore[arg-type]
                                retry_handlers=handlers, logger=sdk_logger)

    def tell(self, channel: str, user: str, text: str) -> None:
        """A message only `user` sees (chat.postEphemeral), e.g. why a click was refused."""
        try:
            self.client.chat_postEphemeral(channel=channel, user=user, text=text)
        except SlackApiError as exc:
            error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
            raise SendError(f"HTTP {exc.response.status_code}: {error or 'not ok'}") from None

    def send(self, payload: Mapping[str, Any], update: Any = None) -> tuple[str, str] | None:
        try:
            if update:
                # A storm's summary edits its first message: one message per storm.
                response = self.client.chat_update(channel=update[0], ts=update[1], **payload)
            else:
                response = self.client.chat_postMessage(channel=self.channel, **payload)
        except SlackApiError as exc:
            error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
            raise SendError(f"HTTP {exc.response.status_code}: {error or 'not ok'}") from None
        channel, ts = response.get("channel"), response.get("ts")
        return (channel, ts) if channel and ts else None


def _quiet_logger() -> logging.Logger:
    # slack-sdk logs the full request URL (a webhook URL is a credential) at INFO when it
    # retries. We log every outcome ourselves, so its logger is a private, silent one.
    quiet = logging.Logger("responder.notify.slack_sdk", logging.CRITICAL)
    quiet.disabled = True
    return quiet


def describe_failure(exc: BaseException) -> str:
    """A short description of a failed send (secrets are scrubbed by the caller)."""
    if isinstance(exc, SendError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, URLError):
        return f"cannot reach Slack: {exc.reason}"
    if isinstance(exc, OSError):
        return f"cannot reach Slack: {type(exc).__name__}"
    return type(exc).__name__


@dataclass(frozen=True)
class _Job:
    """One message to send: `build(count)` makes the payload; `key` groups duplicates."""

    key: tuple
    build: Callable[[int], dict[str, Any]]
    label: str
    failed: bool = False
    #: Only coalesced into an earlier event's response: counted, never shown instead of it.
    coalesced: bool = False
    count: int = 1
    #: The message a summary edits in place (Web API only); None posts a new one. A
    #: callable is asked at delivery (an approval's message, posted by an earlier job).
    update: Any = None
    #: Told the handle of the message once posted (an approval keeps it in the journal).
    on_sent: Callable[[Any], None] | None = None
    #: (channel, user): sent with chat.postEphemeral, seen by that user only.
    only_to: tuple[str, str] | None = None


@dataclass
class _Window:
    """Duplicates of a key seen since its last message, and the one to show for them."""

    opened: float
    count: int = 0
    latest: _Job | None = None
    #: The key's message, once sent, when Slack lets us edit it; and how many events it
    #: already stands for, so an edit shows the running total.
    handle: Any = None
    shown: int = 1

    def add(self, job: _Job) -> None:
        self.count += 1
        if job.coalesced and self.latest is not None:
            return
        # Show the latest duplicate, but never let a later success hide a failure.
        if job.failed or self.latest is None or not self.latest.failed:
            self.latest = job


class SlackNotifier:
    """Sends notifications from a background thread; callers never wait for Slack.

    The first notification for a (Falco rule, namespace, pod) goes out at once; identical
    ones within `config.window_seconds` are counted, and when the window closes one summary
    with the count is sent: with the Web API it edits the first message (chat.update), so a
    storm stays one message; a webhook cannot edit, so it posts one more. Every outcome is
    reported through `on_result`: "sent", "updated", "failed", "dropped" (queue full or
    notifier closed; a dropped notification still counts toward its window's summary) or
    "aggregated".
    """

    def __init__(self, config: SlackConfig, *, on_result: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 retry_handlers: list[RetryHandler] | None = None,
                 undoable: frozenset[str] = frozenset()):
        self.config = config
        #: The actions that can be undone: an approval message offers Undo after them.
        self.undoable = undoable
        self._on_result = on_result
        self._clock = clock
        handlers = default_retry_handlers() if retry_handlers is None else retry_handlers
        sender_class = _WebhookSender if config.webhook_url else _WebApiSender
        self._sender: _Sender = sender_class(config, handlers, _quiet_logger())
        self._secrets = tuple(s for s in (config.webhook_url, config.token) if s)
        self._cond = threading.Condition()
        self._pending: deque[_Job] = deque()
        self._windows: dict[tuple, _Window] = {}
        self._busy = False
        self._closed = False
        self._serial = itertools.count()
        self._thread = threading.Thread(target=self._run, name="slack-notifier", daemon=True)
        self._thread.start()

    def __enter__(self) -> SlackNotifier:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- what callers use ---------------------------------------------------------------
    def notify(self, event: Event, reports: Sequence[ActionReport],
               matched: Sequence[str]) -> None:
        """Queue the message about one event's response; returns at once."""
        reports, matched = tuple(reports), tuple(matched)
        target = message_target(event, reports)
        # Events without a pod (host processes) are grouped per node instead.
        key = ("event", event.rule, target.namespace, target.pod,
               None if target.pod else target.node)
        failed = any(r.result.outcome == Outcome.FAILED for r in reports)
        coalesced = any(r.result.outcome == Outcome.COALESCED for r in reports) and not any(
            r.result.outcome in ACTED for r in reports)
        build = partial(build_slack_message, event, reports, matched,
                        undoable=self.undoable if self.config.interactive else ())
        self._submit(_Job(key, build, f"rule={event.rule!r} uuid={event.uuid}", failed,
                          coalesced))

    def maybe_notify(self, event: Event, reports: Sequence[ActionReport],
                     matched: Sequence[str],
                     rule_notify: Mapping[str, tuple[str, ...] | None]) -> bool:
        """`notify` if `should_notify` says so with the configured min priority."""
        if not should_notify(rule_notify, reports, event, self.config.min_priority):
            return False
        self.notify(event, reports, matched)
        return True

    def send_alert(self, text: str) -> None:
        """Queue a plain guardrail alert; identical alerts are aggregated like events."""
        self._submit(_Job(("alert", text), partial(build_alert_message, text), "alert"))

    def request_approval(self, event: Event, reports: Sequence[ActionReport],
                         record: Mapping[str, Any],
                         on_sent: Callable[[Any], None] | None = None) -> None:
        """Post the message asking for approval (never folded into another); `on_sent` gets
        the message's handle (channel, ts) to update it later."""
        build = self._approval_builder(event, record, reports)
        self._submit(_Job(("approval", event.uuid, next(self._serial)), build,
                          f"approval uuid={event.uuid}", on_sent=on_sent))

    def update_approval(self, event: Event, record: Mapping[str, Any],
                        reports: Sequence[ActionReport], handle: Callable[[], Any]) -> None:
        """Edit the approval message in place (who decided, each outcome); `handle` is
        asked at delivery for the message (None: post a new one)."""
        build = self._approval_builder(event, record, reports)
        self._submit(_Job(("approval", event.uuid, next(self._serial)), build,
                          f"approval update uuid={event.uuid}", update=handle))

    def _approval_builder(self, event: Event, record: Mapping[str, Any],
                          reports: Sequence[ActionReport]) -> Callable[[int], dict[str, Any]]:
        record, reports = dict(record), tuple(reports)  # as they are now, not when sent
        interactive, undoable = self.config.interactive, self.undoable
        return lambda count: build_approval_message(event, record, reports, interactive,
                                                    undoable)

    def tell(self, channel: str, user: str, text: str) -> None:
        """Queue a message only `user` sees in `channel` (Web API only)."""
        self._submit(_Job(("tell", next(self._serial)), lambda count: {"text": text},
                          f"ephemeral to {user}", only_to=(channel, user)))

    def send_undo(self, event: Event, undo: Mapping[str, Any]) -> None:
        """Queue the message about one undo of `event` (never folded into another)."""
        self._submit(_Job(("undo", event.uuid, undo["at"], id(undo)),
                          lambda count: build_undo_message(event, undo), "undo"))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued, and every summary whose window has closed, is sent."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self._pending or self._busy or self._summaries_due():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> bool:
        """Send what is queued and every open window's summary, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("Slack notifier: gave up after %.1fs with %d message(s) unsent",
                           timeout, len(self._pending))
            return False
        return True

    # --- admission (caller's thread) -----------------------------------------------------
    def _submit(self, job: _Job) -> None:
        with self._cond:
            result = self._admit(job)
            self._cond.notify_all()
        if result == "dropped":
            logger.warning("Slack notification dropped (%s): %s", job.label,
                           "notifier closed" if self._closed else
                           f"{self.config.queue_size} messages already waiting")
        elif result == "aggregated":
            logger.debug("Slack notification aggregated (%s)", job.label)
        if result:
            self._report(result)

    def _admit(self, job: _Job) -> str | None:
        now = self._clock()
        window = self._windows.get(job.key)
        if window is not None and (window.count or now - window.opened
                                   < self.config.window_seconds):
            window.add(job)
            return "aggregated"
        # The first job stays the window's shown one until a later, non-coalesced job.
        window = self._windows[job.key] = _Window(now, latest=job)
        if self._closed or len(self._pending) >= self.config.queue_size:
            window.add(job)
            return "dropped"
        self._pending.append(job)
        return None

    # --- the sending thread -------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._closed or self._summaries_due()):
                    self._cond.wait(self._wait_seconds())
                jobs = self._take_work()
                if not jobs and self._closed and not self._pending:
                    return
                self._busy = True
            for job in jobs:
                self._deliver(job)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _take_work(self) -> list[_Job]:
        jobs = [self._pending.popleft()] if self._pending else []
        return jobs + self._take_summaries(force=self._closed and not self._pending)

    def _take_summaries(self, force: bool) -> list[_Job]:
        now, summaries = self._clock(), []
        for key, window in list(self._windows.items()):
            expired = now - window.opened >= self.config.window_seconds
            if window.count and window.latest and (expired or force):
                summaries.append(self._summary(key, window, now))
            elif expired:
                del self._windows[key]
        return summaries

    def _summary(self, key: tuple, window: _Window, now: float) -> _Job:
        """The window's summary; the window restarts, so a storm that goes on gets one
        summary per window (an edit of the same message where Slack allows it)."""
        if window.handle is not None:
            total = window.shown + window.count
            self._windows[key] = _Window(now, handle=window.handle, shown=total)
            return dataclasses.replace(window.latest, count=total, update=window.handle)
        self._windows[key] = _Window(now)
        return dataclasses.replace(window.latest, count=window.count)

    def _summaries_due(self) -> bool:
        now = self._clock()
        return any(w.count and now - w.opened >= self.config.window_seconds
                   for w in self._windows.values())

    def _wait_seconds(self) -> float | None:
        now = self._clock()
        waits = [w.opened + self.config.window_seconds - now
                 for w in self._windows.values() if w.count]
        return max(0.01, min(waits)) if waits else None

    def _deliver(self, job: _Job) -> None:
        try:
            if job.only_to is not None:
                self._sender.tell(*job.only_to, job.build(1)["text"])
                self._report("sent")
                return
            update = job.update() if callable(job.update) else job.update
            handle = self._sender.send(job.build(job.count), update)
        except Exception as exc:  # noqa: BLE001 - Slack must never take the service down
            logger.warning("Slack notification failed (%s, %s): %s", job.label,
                           self.config.mode, self._scrub(describe_failure(exc)))
            self._report("failed")
            return
        logger.debug("Slack notification sent (%s, count=%d)", job.label, job.count)
        if job.on_sent is not None and handle is not None:
            try:
                job.on_sent(handle)
            except Exception:  # noqa: BLE001 - e.g. the journal's disk full: said, not fatal
                logger.exception("cannot keep the handle of Slack message (%s)", job.label)
        if handle is not None and job.update is None:
            with self._cond:
                window = self._windows.get(job.key)
                if window is not None and window.handle is None:
                    window.handle = handle
        self._report("updated" if update else "sent")

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def _report(self, result: str) -> None:
        if self._on_result is None:
            return
        try:
            self._on_result(result)
        except Exception:  # noqa: BLE001 - a broken counter must not stop notifications
            logger.exception("on_result callback failed for %r", result)
