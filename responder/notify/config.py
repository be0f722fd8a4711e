"""Slack settings: how to reach Slack (webhook or bot token), read from RESPONDER_SLACK_*."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..events import Priority
from ..settings import read_secret_file

WEBHOOK_URL = "RESPONDER_SLACK_WEBHOOK_URL"
TOKEN = "RESPONDER_SLACK_TOKEN"
CHANNEL = "RESPONDER_SLACK_CHANNEL"
MIN_PRIORITY = "RESPONDER_SLACK_MIN_PRIORITY"
API_URL = "RESPONDER_SLACK_API_URL"
WINDOW = "RESPONDER_SLACK_WINDOW_SECONDS"
TIMEOUT = "RESPONDER_SLACK_TIMEOUT"
DEFAULT_API_URL = "https://slack.com/api/"
MASK = "***"


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
