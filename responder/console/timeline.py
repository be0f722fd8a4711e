"""The timeline's query side: filters read from a request's arguments, and the rows of one
page (finished alerts from their summaries, unfinished events from the journal)."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..actions import Outcome
from ..alerts import NO_ACTION, QUEUED_STATES, Filters, alert_page, queued_rows, summarize
from ..decisions import resolve_target
from ..errors import EventError
from ..events import Priority, parse_event

PAGE_SIZE = 50
QUEUED_SHOWN = 50
PRIORITIES = [p.label for p in sorted(Priority, reverse=True)]
OUTCOMES = [str(o) for o in Outcome] + [NO_ACTION]
STATES = ["done", "failed", *QUEUED_STATES]
_TIME_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d")
#: The query arguments the timeline reads; links carry these and no others (anything else,
#: `_method` or `_scheme` say, would reach url_for as its own options).
FILTER_ARGS = ("rule", "namespace", "priority", "outcome", "state", "since", "until")
_MAX_ID = 2**63 - 1  # SQLite's INTEGER


class BadFilter(ValueError):
    """A filter value the timeline cannot use (answered 400, naming it)."""


def read_filters(args: Mapping[str, str]) -> Filters:
    """The filters in a request's query string; BadFilter names a bad one."""
    values = {name: (args.get(name) or "").strip()
              for name in ("rule", "namespace", "priority", "outcome", "state")}
    for name, allowed in (("priority", PRIORITIES), ("outcome", OUTCOMES),
                          ("state", STATES)):
        if values[name] and values[name] not in allowed:
            raise BadFilter(f"{name}: must be one of {', '.join(allowed)}")
    return Filters(**values, since=_time(args, "since"), until=_time(args, "until"))


def read_cursor(raw: str | None) -> tuple[float, int] | None:
    """`before=<received>:<id>`, the page's last row."""
    if not raw:
        return None
    received, _, event_id = raw.partition(":")
    try:
        cursor = float(received), int(event_id)
    except ValueError:
        cursor = None
    if cursor is None or not math.isfinite(cursor[0]) or not 0 <= cursor[1] <= _MAX_ID:
        raise BadFilter("before: must be <received>:<id>, as the 'older' link gives")
    return cursor


def _time(args: Mapping[str, str], name: str) -> float | None:
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    for pattern in _TIME_FORMATS:
        try:
            return datetime.strptime(raw, pattern).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise BadFilter(f"{name}: must be a UTC time like 2026-12-01T13:45")


@dataclass
class Page:
    rows: list[dict[str, Any]]
    queued: list[dict[str, Any]]
    older: str | None  # the cursor of the next page


def load_page(conn: sqlite3.Connection, filters: Filters,
              before: tuple[float, int] | None) -> Page:
    """Finished alerts for these filters, and on the first page the newest unfinished
    events that pass them."""
    queued = []
    if before is None and filters.state in ("", *QUEUED_STATES):
        queued = [q for q in queued_summaries(conn) if _passes(q, filters)]
    if filters.state in QUEUED_STATES:
        return Page([], queued, None)
    rows = alert_page(conn, filters, PAGE_SIZE + 1, before)
    older = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        older = f"{rows[-1]['received']!r}:{rows[-1]['id']}"
    return Page(rows, queued, older)


def queued_summaries(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The newest unfinished events, summarised from their bodies."""
    found = []
    for event_id, key, body, received, state, attempts, error in queued_rows(conn,
                                                                           QUEUED_SHOWN):
        row = {"id": event_id, "uuid": key, "received": received, "state": state,
               "attempts": attempts, "error": error, "rule": "", "priority": "",
               "namespace": None, "pod": None, "node": None, "matched": [], "actions": []}
        try:
            event = parse_event(bytes(body))
        except EventError:
            row["rule"] = "(unreadable event)"
        else:
            summary = summarize(event, resolve_target(event), received, (), ())
            row.update(rule=summary.rule, priority=summary.priority,
                       namespace=summary.namespace, pod=summary.pod, node=summary.node)
        found.append(row)
    return found


def _passes(row: Mapping[str, Any], filters: Filters) -> bool:
    for name in ("rule", "namespace", "priority", "state"):
        wanted = getattr(filters, name)
        if wanted and row[name] != wanted:
            return False
    if filters.outcome:
        return False  # nothing is decided yet
    if filters.since is not None and row["received"] < filters.since:
        return False
    return filters.until is None or row["received"] < filters.until
