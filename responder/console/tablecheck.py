"""Try a changed action table: validate its text with the table loader, then replay the
journal's last alerts against it and the loaded table and keep what changes. Never applies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..actions import Registry
from ..decisions import plan_response
from ..errors import EventError, TableError
from ..events import Event, parse_event
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


class Replayer:
    """Replays recent alerts with a table. The loaded table's lines for the same alerts are
    kept (one set): as an operator types, only the edited table is replayed again."""

    def __init__(self, registry: Registry, own_namespace: str | None = None,
                 force_dry_run: bool = False):
        self.registry = registry
        self.own_namespace = own_namespace
        self.force_dry_run = force_dry_run
        self._executor = Executor(actions=None)  # never touches a cluster
        self._kept: tuple[Any, ...] = (None, None, None)  # (table, keys, (events, lines))

    def replay(self, table: Table, events: list[Event]) -> list[dict[str, Any]]:
        lines = []
        for event in events:
            plan = plan_response(table, self.registry, event, own_namespace=self.own_namespace,
                                 force_dry_run=self.force_dry_run)
            lines.append(replay_line(plan, self._executor.execute(plan, log=False)))
        return lines

    def loaded_lines(self, loaded: Table, bodies: list[tuple[str, bytes]]
                     ) -> tuple[list[Event], list[dict[str, Any]]]:
        """The alerts' events and the loaded table's replay of them."""
        keys = tuple(key for key, _ in bodies)
        table, kept_keys, found = self._kept
        if table is loaded and kept_keys == keys:
            return found
        events = []
        for _, body in bodies:
            try:
                events.append(parse_event(body))
            except EventError:
                continue  # an unreadable row: the worker failed it; no decision to compare
        found = (events, self.replay(loaded, events))
        self._kept = (loaded, keys, found)  # one assignment: threads see old or new
        return found

    def check(self, text: str, loaded: Table, bodies: list[tuple[str, bytes]]) -> Check:
        """Validate `text`; when valid, replay `bodies` (key, raw event) with it and with
        the loaded table, and keep the alerts whose decisions differ."""
        if len(text.encode("utf-8")) > MAX_TEXT:
            return Check([f"table: larger than {MAX_TEXT // 1024} KiB"])
        try:
            table = parse_table(text, EDITOR_SOURCE, self.registry)
        except TableError as exc:
            return Check(exc.problems)
        events, before = self.loaded_lines(loaded, bodies)
        changes = changed_events(before, self.replay(table, events))
        return Check([], len(table.rules), len(events), changes)


def clamp_last(raw: str | None) -> int:
    """How many recent alerts to replay, from a form value (bounded)."""
    try:
        value = int(raw or DEFAULT_LAST)
    except ValueError:
        return DEFAULT_LAST
    return max(1, min(MAX_LAST, value))
