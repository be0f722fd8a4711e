"""When an event's response goes to Slack: the table's `notify` and the outcomes. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..actions import Outcome
from ..events import Event, Priority
from ..executor import ActionReport
from ..table import Table

# Outcomes after which the default `notify` (no `notify:` key in the table rule) speaks up:
# the responder called the cluster, whether or not that changed anything.
ACTED = frozenset({Outcome.DONE, Outcome.ALREADY_DONE, Outcome.FAILED})
# Coalesced events notify too, so a storm's message can carry its count.
NOTIFIABLE = ACTED | {Outcome.COALESCED}


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
