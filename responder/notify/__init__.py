"""Slack notifications, one concern per module.

- `config`: how to reach Slack (SlackConfig, the `slack` group of the settings);
- `policy`: when an event's response is worth a message (`should_notify`);
- `message`: the pure Block Kit builder (no I/O, every event string escaped);
- `sender`: the background sender that never blocks a caller and folds duplicates.

The names below are loaded on first use: `responder.settings` imports `config`, and the
processes that read settings first (`responder serve`'s supervisor, `responder work`
before it handles SIGTERM) must not wait for the Slack and Kubernetes clients.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "SlackConfig": "config", "slack_status": "config",
    "notify_choices": "policy", "should_notify": "policy",
    "COLOURS": "message", "CUT_MARK": "message", "SECTION_LIMIT": "message",
    "build_alert_message": "message", "build_slack_message": "message",
    "build_undo_message": "message",
    "cut_escaped": "message", "escape_mrkdwn": "message", "image_of": "message",
    "outcome_text": "message",
    "SendError": "sender", "SlackNotifier": "sender", "default_retry_handlers": "sender",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
