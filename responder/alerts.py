"""Alert summaries for the console: one row per finished event, written by the worker in the
commit that finishes it, indexed for the timeline's filters, and hourly counts per rule.

The intake never touches these tables (its path stays one INSERT into `events`); events not
yet finished are read from `events` itself.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the journal imports this module, and the actions import the journal
    from .actions import Target
    from .events import Event

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    event_id INTEGER PRIMARY KEY,      -- events.id
    key TEXT NOT NULL,                 -- the event's uuid
    received REAL NOT NULL,
    rule TEXT NOT NULL,
    priority TEXT NOT NULL,
    namespace TEXT,
    pod TEXT,
    node TEXT,
    matched TEXT NOT NULL,             -- JSON list of table rule names
    actions TEXT NOT NULL,             -- JSON list of [action, outcome]
    state TEXT NOT NULL                -- done or failed
);
CREATE INDEX IF NOT EXISTS alerts_received ON alerts (received);
CREATE INDEX IF NOT EXISTS alerts_rule ON alerts (rule, received);
CREATE INDEX IF NOT EXISTS alerts_namespace ON alerts (namespace, received);
CREATE INDEX IF NOT EXISTS alerts_priority ON alerts (priority, received);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state, received);
-- Each distinct outcome of an alert ("none" when no action was planned): the outcome filter
-- walks this in time order instead of scanning every alert.
CREATE TABLE IF NOT EXISTS alert_outcomes (
    outcome TEXT NOT NULL, received REAL NOT NULL, event_id INTEGER NOT NULL,
    PRIMARY KEY (outcome, received, event_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alert_outcomes_event ON alert_outcomes (event_id);
-- Alerts (outcome '') and action outcomes per hour and Falco rule, for the overview's
-- charts: 24 hours of them are a few hundred rows whatever the volume.
CREATE TABLE IF NOT EXISTS alert_hours (
    hour INTEGER NOT NULL, rule TEXT NOT NULL, outcome TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (hour, rule, outcome)) WITHOUT ROWID;
"""
NO_ACTION = "none"
HOUR = 3600


@dataclass(frozen=True)
class AlertSummary:
    """What the timeline shows of one finished event."""

    key: str
    received: float
    rule: str
    priority: str
    namespace: str | None
    pod: str | None
    node: str | None
    matched: tuple[str, ...]
    actions: tuple[tuple[str, str], ...]  # (action, outcome)

    @property
    def outcomes(self) -> set[str]:
        return {outcome for _, outcome in self.actions} or {NO_ACTION}


def summarize(event: Event, target: Target, received: float, matched: Sequence[str],
              actions: Iterable[tuple[str, str]]) -> AlertSummary:
    """The summary of an event (its target as `decisions.resolve_target` finds it) and the
    outcomes of its actions. Pure."""
    return AlertSummary(event.uuid, received, event.rule, event.priority.label,
                        target.namespace, target.pod, target.node, tuple(matched),
                        tuple(actions))


def write_summaries(conn: sqlite3.Connection, summaries: Iterable[tuple[int, str, AlertSummary]]
                    ) -> None:
    """Inside the worker's closing transaction: (event id, final state, summary) each. An
    event finished again (after a crash between commits) is counted once."""
    for event_id, state, summary in summaries:
        new = conn.execute(
            "INSERT OR IGNORE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (event_id, summary.key, summary.received, summary.rule, summary.priority,
             summary.namespace, summary.pod, summary.node, json.dumps(summary.matched),
             json.dumps(summary.actions), state)).rowcount
        if not new:
            conn.execute("UPDATE alerts SET actions = ?, state = ? WHERE event_id = ?",
                         (json.dumps(summary.actions), state, event_id))
            continue
        conn.executemany("INSERT OR IGNORE INTO alert_outcomes VALUES (?, ?, ?)",
                         [(o, summary.received, event_id) for o in summary.outcomes])
        hour = int(summary.received // HOUR)
        counts: dict[str, int] = {"": 1}
        for _, outcome in summary.actions:
            counts[outcome] = counts.get(outcome, 0) + 1
        conn.executemany("INSERT INTO alert_hours VALUES (?, ?, ?, ?) ON CONFLICT "
                         "(hour, rule, outcome) DO UPDATE SET n = n + excluded.n",
                         [(hour, summary.rule, o, n) for o, n in counts.items()])


def prune_summaries(conn: sqlite3.Connection, cutoff: float) -> None:
    """Inside the journal's prune transaction, after its events are deleted: forget the
    summaries of the events gone (all received before `cutoff`, as they finished before
    it), walking only the alerts that old, and hourly counts a day older."""
    gone = ("SELECT event_id FROM alerts WHERE received < ? AND NOT EXISTS "
            "(SELECT 1 FROM events WHERE events.id = alerts.event_id)")
    conn.execute(f"DELETE FROM alert_outcomes WHERE event_id IN ({gone})", (cutoff,))
    conn.execute(f"DELETE FROM alerts WHERE event_id IN ({gone})", (cutoff,))
    conn.execute("DELETE FROM alert_hours WHERE hour < ?", (int(cutoff // HOUR) - 24,))


# --- reading, for the console --------------------------------------------------------

@dataclass(frozen=True)
class Filters:
    """The timeline's filters; empty strings and None mean "any"."""

    rule: str = ""
    namespace: str = ""
    priority: str = ""
    outcome: str = ""
    state: str = ""
    since: float | None = None
    until: float | None = None

    @property
    def any(self) -> bool:
        return any((self.rule, self.namespace, self.priority, self.outcome, self.state,
                    self.since is not None, self.until is not None))


_ROW = ("a.event_id, a.key, a.received, a.rule, a.priority, a.namespace, a.pod, a.node, "
        "a.matched, a.actions, a.state")
AWAITING = "awaiting-approval"  # journal.AWAITING (the journal imports this module)
QUEUED_STATES = ("pending", "running", AWAITING)


def alert_page(conn: sqlite3.Connection, filters: Filters, limit: int,
               before: tuple[float, int] | None = None) -> list[dict[str, Any]]:
    """Finished alerts newest first, `limit` of them, older than the cursor `before`
    (received, event id). Every filter is served by an index."""
    where, args = _conditions(filters, before)
    if filters.outcome:
        # The outcome's own index gives the order; each alert is then read by its key.
        sql = (f"SELECT {_ROW} FROM alert_outcomes o CROSS JOIN alerts a "
               f"ON a.event_id = o.event_id WHERE o.outcome = ? {where} "
               "ORDER BY o.received DESC, o.event_id DESC LIMIT ?")
        args = [filters.outcome, *args, limit]
    else:
        sql = (f"SELECT {_ROW} FROM alerts a WHERE 1 {where} "
               "ORDER BY a.received DESC, a.event_id DESC LIMIT ?")
        args = [*args, limit]
    return [_alert_row(row) for row in conn.execute(sql, args)]


def _conditions(filters: Filters, before: tuple[float, int] | None
                ) -> tuple[str, list[Any]]:
    parts, args = [], []
    for column in ("rule", "namespace", "priority", "state"):
        value = getattr(filters, column)
        if value:
            parts.append(f"a.{column} = ?")
            args.append(value)
    if filters.since is not None:
        parts.append("a.received >= ?")
        args.append(filters.since)
    if filters.until is not None:
        parts.append("a.received < ?")
        args.append(filters.until)
    if before is not None:
        parts.append("(a.received, a.event_id) < (?, ?)")
        args.extend(before)
    return "".join(f" AND {p}" for p in parts), args


def _alert_row(row: tuple) -> dict[str, Any]:
    (event_id, key, received, rule, priority, namespace, pod, node, matched, actions,
     state) = row
    return {"id": event_id, "uuid": key, "received": received, "rule": rule,
            "priority": priority, "namespace": namespace, "pod": pod, "node": node,
            "matched": json.loads(matched), "actions": [tuple(a) for a in json.loads(actions)],
            "state": state}


# The newest unfinished events, each query walking the journal's queue index in its order
# (one ORDER BY id over every pending row would sort them all: 90 ms at 100,000).
_QUEUED_IDS = (
    "SELECT id FROM events WHERE state = 'pending' AND not_before = 0 ORDER BY id DESC "
    "LIMIT ?",  # new, or released by a dead worker
    "SELECT id FROM events WHERE state = 'pending' AND not_before > 0 "
    "ORDER BY not_before DESC LIMIT ?",  # waiting for a retry
    "SELECT id FROM events WHERE state = 'running' ORDER BY not_before DESC LIMIT ?",
    f"SELECT id FROM events WHERE state = '{AWAITING}' ORDER BY not_before DESC LIMIT ?",
)


def queued_rows(conn: sqlite3.Connection, limit: int) -> list[tuple[int, str, bytes, float,
                                                                     str, int, str | None]]:
    """The newest events not yet finished (waiting, being worked on, or awaiting approval):
    (id, key, body, received, state, attempts, error), newest first. Their summaries are
    made on display."""
    ids = sorted({row[0] for sql in _QUEUED_IDS for row in conn.execute(sql, (limit,))},
                 reverse=True)[:limit]
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    return conn.execute(
        f"SELECT id, key, body, received, state, attempts, error FROM events "
        f"WHERE id IN ({marks}) ORDER BY id DESC", ids).fetchall()


def hourly_counts(conn: sqlite3.Connection, now: float, hours: int = 24
                  ) -> list[tuple[int, str, str, int]]:
    """(hour, rule, outcome, n) over the last `hours` hours, this one included; outcome ''
    counts alerts."""
    first = int(now // HOUR) - hours + 1
    return conn.execute("SELECT hour, rule, outcome, n FROM alert_hours WHERE hour >= ?",
                        (first,)).fetchall()


def recent_bodies(conn: sqlite3.Connection, limit: int) -> list[tuple[str, bytes]]:
    """The last `limit` events received, oldest first (key, body): what a table change is
    tried against."""
    rows = conn.execute("SELECT key, body FROM events ORDER BY id DESC LIMIT ?",
                        (limit,)).fetchall()
    return [(key, bytes(body)) for key, body in reversed(rows)]
