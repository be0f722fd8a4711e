"""Try a changed action table: validate its text with the table loader, then replay the
journal's last alerts against it and the loaded table and keep what changes. Never applies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..actions import Registry
from ..decisions import plan_response
from ..errors import EventError, TableError
from ..events import parse_event
from ..executor import Executor
from ..service import replay_line
from ..table import Table, parse_table
from ..tablediff import changed_events

EDITOR_SOURCE = "<console editor>"
DEFAULT_LAST = 200
MAX_LAST = 2000
MAX_TEXT = 256 * 1024


@dataclass
class Check:
    """What the editor shows: the table's problems, or the alerts whose decisions change."""

    problems: list[str] = field(default_factory=list)
    rules: int = 0
    replayed: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_table(text: str, loaded: Table, registry: Registry,
                bodies: list[tuple[str, bytes]], *, own_namespace: str | None = None,
                force_dry_run: bool = False) -> Check:
    """Validate `text`; when valid, replay `bodies` (key, raw event) with both tables."""
    if len(text.encode("utf-8")) > MAX_TEXT:
        return Check([f"table: larger than {MAX_TEXT // 1024} KiB"])
    try:
        table = parse_table(text, EDITOR_SOURCE, registry)
    except TableError as exc:
        return Check(exc.problems)
    events = []
    for _, body in bodies:
        try:
            events.append(parse_event(body))
        except EventError:
            continue  # an unreadable row: the worker failed it; no decision to compare
    executor = Executor(actions=None)  # never touches a cluster

    def replay(with_table: Table) -> list[dict[str, Any]]:
        lines = []
        for event in events:
            plan = plan_response(with_table, registry, event, own_namespace=own_namespace,
                                 force_dry_run=force_dry_run)
            lines.append(replay_line(plan, executor.execute(plan)))
        return lines

    changes = changed_events(replay(loaded), replay(table))
    return Check([], len(table.rules), len(events), changes)


def clamp_last(raw: str | None) -> int:
    """How many recent alerts to replay, from a form value (bounded)."""
    try:
        value = int(raw or DEFAULT_LAST)
    except ValueError:
        return DEFAULT_LAST
    return max(1, min(MAX_LAST, value))
