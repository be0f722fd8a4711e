"""Slack settings: how to reach Slack (webhook or bot token), read from RESPONDER_SLACK_*."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..envvars import (
    MASK,
    BadValue,
    is_http_url,
    is_set,
    non_negative_float,
    positive_float,
    read_fields,
    setting,
)
from ..errors import ConfigError
from ..events import Priority

WEBHOOK_URL = "RESPONDER_SLACK_WEBHOOK_URL"
TOKEN = "RESPONDER_SLACK_TOKEN"
CHANNEL = "RESPONDER_SLACK_CHANNEL"
MIN_PRIORITY = "RESPONDER_SLACK_MIN_PRIORITY"
API_URL = "RESPONDER_SLACK_API_URL"
WINDOW = "RESPONDER_SLACK_WINDOW_SECONDS"
TIMEOUT = "RESPONDER_SLACK_TIMEOUT"
SIGNING_SECRET = "RESPONDER_SLACK_SIGNING_SECRET"
APPROVERS = "RESPONDER_SLACK_APPROVERS"
#: A Slack user id (U... or, for Enterprise Grid, W...).
USER_ID = re.compile(r"^[UW][A-Z0-9]{2,40}$")


def _user_ids(raw: str) -> tuple[str, ...]:
    ids = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not ids or not all(USER_ID.match(i) for i in ids):
        raise BadValue("must be Slack user ids separated by commas (U012AB3CD,W0123ABC)")
    return ids


def _priority(raw: str) -> Priority:
    try:
        return Priority.parse(raw)
    except ValueError as exc:
        raise BadValue(str(exc)) from None  # names the priorities it accepts


@dataclass(frozen=True)
class SlackConfig:
    """How to reach Slack: an incoming webhook, or a bot token and a channel (never both).

    `min_priority` defaults to Debug: the table's `notify` already decides which events
    are worth a message (by default only those where an action ran or failed), and a
    response the responder really made should not go unreported unless the operator asks.
    """

    webhook_url: str | None = setting(
        WEBHOOK_URL, "incoming-webhook URL; a credential, never shown", None,
        secret=True, from_file=True)
    token: str | None = setting(TOKEN, "bot token (xoxb-…) for chat.postMessage; never shown",
                                None, secret=True, from_file=True)
    channel: str | None = setting(
        CHANNEL, "channel for chat.postMessage (incoming webhooks post where they were "
        "created)", None)
    min_priority: Priority = setting(
        MIN_PRIORITY, "events below this priority never go to Slack, whatever the table says",
        Priority.DEBUG, _priority)
    api_url: str = setting(API_URL, "Web API base URL, for tests and egress proxies",
                           "https://slack.com/api/")
    window_seconds: float = setting(
        WINDOW, "identical notifications (Falco rule, namespace, pod) within this many "
        "seconds are folded into one summary message with a count; 0 turns aggregation off",
        60.0, non_negative_float)
    timeout: float = setting(TIMEOUT, "seconds per HTTP request to Slack (retries come on "
                             "top, see default_retry_handlers)", 10.0, positive_float)
    signing_secret: str | None = setting(
        SIGNING_SECRET, "the Slack app's signing secret: turns on the Approve and Reject "
        "buttons and POST /slack/interactions (Web API mode only); never shown", None,
        secret=True, from_file=True)
    approvers: tuple[str, ...] = setting(
        APPROVERS, "Slack user ids (comma-separated) whose clicks may approve or reject; "
        "unset = anyone in the channel", (), _user_ids)
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
        if self.webhook_url and not is_http_url(self.webhook_url):
            raise ConfigError(f"{WEBHOOK_URL}: must be an http(s) URL")  # value not echoed
        if self.token and any(c.isspace() for c in self.token):
            raise ConfigError(f"{TOKEN}: must not contain whitespace")
        if self.signing_secret and not self.token:
            raise ConfigError(f"{SIGNING_SECRET}: only used with {TOKEN} (an incoming "
                              "webhook cannot show buttons); approve over HTTP instead")
        if self.approvers and not self.signing_secret:
            raise ConfigError(f"{APPROVERS}: needs {SIGNING_SECRET} (without it nobody "
                              "can click)")
        if not is_http_url(self.api_url):
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
        if not (is_set(env, WEBHOOK_URL) or is_set(env, TOKEN)):
            if is_set(env, SIGNING_SECRET) or is_set(env, APPROVERS):
                raise ConfigError(f"{SIGNING_SECRET} and {APPROVERS}: need {TOKEN} "
                                  "(Slack is off without it)")
            return None
        return cls(**read_fields(cls, env))

    @property
    def interactive(self) -> bool:
        """Whether messages carry Approve/Reject buttons that Slack can call back."""
        return bool(self.token and self.signing_secret)

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
            SIGNING_SECRET: MASK if self.signing_secret else None,
            APPROVERS: ",".join(self.approvers) or None,
        }


def slack_status(config: SlackConfig | None) -> str:
    """One start-up log line saying whether Slack is on, and how."""
    if config is None:
        return (f"Slack notifications off: neither {WEBHOOK_URL}(_FILE) nor "
                f"{TOKEN}(_FILE) is set")
    where = ("an incoming webhook" if config.webhook_url
             else f"chat.postMessage to {config.channel}")
    if config.interactive:
        who = (f"{len(config.approvers)} approver(s) in {APPROVERS}" if config.approvers else
               f"anyone in {config.channel} may click them ({APPROVERS} limits who)")
        approvals = f"approvals: Approve/Reject buttons at POST /slack/interactions, {who}"
    elif config.webhook_url:
        approvals = ("approvals only over HTTP (POST /events/<uuid>/approve): an incoming "
                     "webhook cannot show buttons")
    else:
        approvals = (f"approvals only over HTTP (POST /events/<uuid>/approve): set "
                     f"{SIGNING_SECRET} for buttons")
    return (f"Slack notifications on: {where}, min priority {config.min_priority.label}, "
            f"aggregation window {config.window_seconds:g}s; {approvals}")
