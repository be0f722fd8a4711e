"""Slack notifications: settings, a pure message builder, and a sender that never blocks."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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

from .actions import Outcome, Result, Target
from .decisions import resolve_target
from .errors import ConfigError
from .events import Event, Priority
from .executor import ActionReport
from .settings import read_secret_file
from .table import Table

logger = logging.getLogger(__name__)

WEBHOOK_URL = "RESPONDER_SLACK_WEBHOOK_URL"
TOKEN = "RESPONDER_SLACK_TOKEN"
CHANNEL = "RESPONDER_SLACK_CHANNEL"
MIN_PRIORITY = "RESPONDER_SLACK_MIN_PRIORITY"
API_URL = "RESPONDER_SLACK_API_URL"
WINDOW = "RESPONDER_SLACK_WINDOW_SECONDS"
TIMEOUT = "RESPONDER_SLACK_TIMEOUT"
DEFAULT_API_URL = "https://slack.com/api/"
MASK = "***"

# Outcomes after which the default `notify` (no `notify:` key in the table rule) speaks up:
# the responder called the cluster, whether or not that changed anything.
ACTED = frozenset({Outcome.DONE, Outcome.ALREADY_DONE, Outcome.FAILED})
# Coalesced events notify too, so a storm's message can carry its count.
NOTIFIABLE = ACTED | {Outcome.COALESCED}


# --- configuration ---------------------------------------------------------------------

@dataclass(frozen=True)
class SlackConfig:
    """How to reach Slack: an incoming webhook, or a bot token and a channel (never both).

    `min_priority` defaults to Debug: the table's `notify` already decides which events
    are worth a message (by default only those where an action ran or failed), and a
    response the responder really made should not go unreported unless the operator asks.
    """

    #: Incoming-webhook URL; it is a credential, so it is never shown.
    webhook_url: str | None = field(default=None, repr=False)
    #: Bot token (xoxb-…) for chat.postMessage; never shown.
    token: str | None = field(default=None, repr=False)
    #: Channel for chat.postMessage; incoming webhooks post where they were created.
    channel: str | None = None
    #: Events below this priority never go to Slack, whatever the table says.
    min_priority: Priority = Priority.DEBUG
    #: Web API base URL (WebClient base_url), for tests and egress proxies.
    api_url: str = DEFAULT_API_URL
    #: Identical notifications (Falco rule, namespace, pod) within this many seconds are
    #: folded into one summary message with a count; 0 turns aggregation off.
    window_seconds: float = 60.0
    #: Seconds per HTTP request to Slack (retries come on top, see default_retry_handlers).
    timeout: float = 10.0
    #: Messages waiting to be sent; beyond this, notifications are dropped (and counted).
    queue_size: int = 100

    def __post_init__(self) -> None:
        if bool(self.webhook_url) == bool(self.token):
            raise ConfigError(f"{WEBHOOK_URL} or {TOKEN}: set exactly one way to reach Slack")
        if self.token and not self.channel:
            raise ConfigError(f"{CHANNEL}: required with {TOKEN}")
        if self.webhook_url and self.channel:
            raise ConfigError(f"{CHANNEL}: only used with {TOKEN}; an incoming webhook "
                              "posts to the channel chosen when it was created")
        if self.webhook_url and not _is_http_url(self.webhook_url):
            raise ConfigError(f"{WEBHOOK_URL}: must be an http(s) URL")  # value not echoed
        if self.token and any(c.isspace() for c in self.token):
            raise ConfigError(f"{TOKEN}: must not contain whitespace")
        if not _is_http_url(self.api_url):
            raise ConfigError(f"{API_URL}: must be an http(s) URL")
        if self.window_seconds < 0 or self.timeout <= 0 or self.queue_size < 1:
            raise ConfigError(f"{WINDOW} must be >= 0, {TIMEOUT} > 0 and queue_size >= 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SlackConfig | None:
        """Read the RESPONDER_SLACK_* variables (default: os.environ); None when neither a
        webhook nor a token is set, which means Slack is off.

        Each secret may come from a file instead (`<NAME>_FILE`, e.g. a mounted Secret).
        Raises ConfigError naming the variable; secret values never appear in errors.
        """
        env = os.environ if env is None else env
        webhook_url = read_secret(env, WEBHOOK_URL)
        token = read_secret(env, TOKEN)
        if webhook_url is None and token is None:
            return None
        return cls(
            webhook_url=webhook_url,
            token=token,
            channel=_value(env, CHANNEL),
            min_priority=_parse(env, MIN_PRIORITY, Priority.parse, Priority.DEBUG),
            api_url=_value(env, API_URL) or DEFAULT_API_URL,
            window_seconds=_parse(env, WINDOW, _non_negative, 60.0),
            timeout=_parse(env, TIMEOUT, _positive, 10.0),
        )

    @property
    def mode(self) -> str:
        return "webhook" if self.webhook_url else "web-api"

    def describe(self) -> dict[str, Any]:
        """Effective settings for the start-up log, secrets masked."""
        return {
            "mode": self.mode,
            WEBHOOK_URL: MASK if self.webhook_url else None,
            TOKEN: MASK if self.token else None,
            CHANNEL: self.channel,
            MIN_PRIORITY: self.min_priority.label,
            API_URL: self.api_url if self.token else None,
            WINDOW: self.window_seconds,
            TIMEOUT: self.timeout,
        }


def slack_status(config: SlackConfig | None) -> str:
    """One start-up log line saying whether Slack is on, and how."""
    if config is None:
        return (f"Slack notifications off: neither {WEBHOOK_URL}(_FILE) nor "
                f"{TOKEN}(_FILE) is set")
    where = ("an incoming webhook" if config.webhook_url
             else f"chat.postMessage to {config.channel}")
    return (f"Slack notifications on: {where}, min priority {config.min_priority.label}, "
            f"aggregation window {config.window_seconds:g}s")


def read_secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret from `name` or from the file named by `name`_FILE; None when neither is set."""
    value, path = _value(env, name), _value(env, f"{name}_FILE")
    if value is not None and path is not None:
        raise ConfigError(f"{name} and {name}_FILE: set one, not both")
    if path is None:
        return value.strip() if value is not None else None
    return read_secret_file(f"{name}_FILE", path)


def _value(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    return raw if raw is not None and raw.strip() else None


def _parse(env: Mapping[str, str], name: str, parser: Callable[[str], Any], default: Any) -> Any:
    raw = _value(env, name)
    if raw is None:
        return default
    try:
        return parser(raw.strip())
    except ValueError as exc:
        reason = str(exc) if "must" in str(exc) or "priority" in str(exc) else (
            f"cannot parse {raw!r}")
        raise ConfigError(f"{name}: {reason}") from None


def _positive(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("must be 0 or a positive number of seconds")
    return value


def _is_http_url(url: str) -> bool:
    return url.startswith(("https://", "http://")) and len(url) > len("https://")


# --- when to notify --------------------------------------------------------------------

def should_notify(rule_notify: Mapping[str, tuple[str, ...] | None],
                  reports: Sequence[ActionReport], event: Event,
                  min_priority: Priority) -> bool:
    """Whether an event's response goes to Slack. Pure.

    `rule_notify` maps each matched table rule's name to its `notify` setting (see
    `notify_choices`). A rule with `notify: [slack]` always asks; `notify: []` never does;
    no `notify` key (None) asks when one of that rule's actions ran or failed, or was
    coalesced into an earlier response (so the storm's message can count it). One asking
    rule is enough, but events below `min_priority` never notify.
    """
    if event.priority < min_priority:
        return False
    for rule, notify in rule_notify.items():
        if notify is None and any(r.decision.table_rule == rule
                                  and r.result.outcome in NOTIFIABLE
                                  for r in reports):
            return True
        if notify is not None and "slack" in notify:
            return True
    return False


def notify_choices(table: Table, matched: Iterable[str]) -> dict[str, tuple[str, ...] | None]:
    """The `notify` setting of each matched table rule, by name, for `should_notify`."""
    wanted = set(matched)
    return {rule.name: rule.notify for rule in table.rules if rule.name in wanted}


# --- the message -----------------------------------------------------------------------

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
                        matched: Sequence[str], count: int = 1) -> dict[str, Any]:
    """The keyword arguments for WebhookClient.send / WebClient.chat_postMessage. Pure.

    `text` is the notification and fallback line; the details are Block Kit blocks inside
    one attachment, because only attachments carry the severity colour bar. `count` is how
    many events this message stands for (more than 1 for an aggregation summary).
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
    blocks.append({"type": "context", "elements": [_mrkdwn(_context_text(event, count))]})
    text = _headline(event, target, reports, count)
    return {"text": text,
            "attachments": [{"color": COLOURS[event.priority], "fallback": text,
                             "blocks": blocks}]}


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
             f": {outcome_text(r.result)}" for r in reports]
    text = header
    for shown, line in enumerate(lines):
        more = f"\n… and {len(lines) - shown} more"
        if len(text) + 1 + len(line) + len(more) > SECTION_LIMIT:
            return text + more
        text += "\n" + line
    return text


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


# --- sending ---------------------------------------------------------------------------

class SendError(Exception):
    """Slack answered, but not with success; the message is safe to log."""


class _Sender(Protocol):
    def send(self, payload: Mapping[str, Any], update: Any = None) -> Any:
        """Post (or, where Slack allows, update the message `update` names); returns a
        handle naming the message for a later update, or None."""


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
    #: The message a summary edits in place (Web API only); None posts a new one.
    update: Any = None


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
                 retry_handlers: list[RetryHandler] | None = None):
        self.config = config
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
        build = partial(build_slack_message, event, reports, matched)
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
            handle = self._sender.send(job.build(job.count), job.update)
        except Exception as exc:  # noqa: BLE001 - Slack must never take the service down
            logger.warning("Slack notification failed (%s, %s): %s", job.label,
                           self.config.mode, self._scrub(describe_failure(exc)))
            self._report("failed")
            return
        logger.debug("Slack notification sent (%s, count=%d)", job.label, job.count)
        if handle is not None and job.update is None:
            with self._cond:
                window = self._windows.get(job.key)
                if window is not None and window.handle is None:
                    window.handle = handle
        self._report("updated" if job.update else "sent")

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
