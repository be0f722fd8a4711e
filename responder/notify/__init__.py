"""Slack notifications, one concern per module.

- `config`: how to reach Slack (SlackConfig, from the RESPONDER_SLACK_* settings);
- `policy`: when an event's response is worth a message (`should_notify`);
- `message`: the pure Block Kit builder (no I/O, every event string escaped);
- `sender`: the background sender that never blocks a caller and folds duplicates.
"""

from .config import SlackConfig, slack_status
from .message import (
    COLOURS,
    CUT_MARK,
    SECTION_LIMIT,
    build_alert_message,
    build_slack_message,
    cut_escaped,
    escape_mrkdwn,
    image_of,
    outcome_text,
)
from .policy import notify_choices, should_notify
from .sender import SendError, SlackNotifier, default_retry_handlers

__all__ = [
    "COLOURS", "CUT_MARK", "SECTION_LIMIT", "SendError", "SlackConfig", "SlackNotifier",
    "build_alert_message", "build_slack_message", "cut_escaped", "default_retry_handlers",
    "escape_mrkdwn", "image_of", "notify_choices", "outcome_text", "should_notify",
    "slack_status",
]
