"""Try a changed action table: validate its text with the table loader, then replay the
journal's last alerts against it and the loaded table and keep what changes. Never applies."""

from __future__ import annotations

import threading
import time
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
#: How long one check may replay: a large table against 2,000 alerts took minutes, on a
#: request thread the intake shares; the rest are left out and the check says how many.
REPLAY_SECONDS = 5.0


class CheckBusy(Exception):
    """Another check runs in this process (one at a time: each holds a request thread)."""


@dataclass
class Check:
    """What the editor shows: the table's problems, or the alerts whose decisions change."""

    problems: list[str] = field(default_factory=list)
    rules: int = 0
    replayed: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)
    left_out: int = 0  # alerts not replayed: the time budget ran out

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
        self._running = threading.Lock()

    def replay(self, table: Table, events: list[Event], deadline: float | None = None
               ) -> list[dict[str, Any]]:
        """Each event's replay line, in order, until `deadline` (monotonic) passes."""
        lines = []
        for event in events:
            if deadline is not None and time.monotonic() > deadline:
                break
            plan = plan_response(table, self.registry, event, own_namespace=self.own_namespace,
                                 force_dry_run=self.force_dry_run)
            lines.append(replay_line(plan, self._executor.execute(plan, log=False)))
        return lines

    def loaded_lines(self, loaded: Table, bodies: list[tuple[str, bytes]],
                     deadline: float | None = None
                     ) -> tuple[list[Event], list[dict[str, Any]]]:
        """The alerts' events and the loaded table's replay of them (of the first ones
        only, when `deadline` passes; such a replay is not kept)."""
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
        found = (events, self.replay(loaded, events, deadline))
        if len(found[1]) == len(events):
            self._kept = (loaded, keys, found)  # one assignment: threads see old or new
        return found

    def check(self, text: str, loaded: Table, bodies: list[tuple[str, bytes]]) -> Check:
        """Validate `text`; when valid, replay `bodies` (key, raw event) with it and with
        the loaded table, and keep the alerts whose decisions differ: as many as
        REPLAY_SECONDS allow. CheckBusy when another check runs."""
        if len(text.encode("utf-8")) > MAX_TEXT:
            return Check([f"table: larger than {MAX_TEXT // 1024} KiB"])
        if not self._running.acquire(blocking=False):
            raise CheckBusy("another table check is running; try again in a few seconds")
        try:
            return self._check(text, loaded, bodies, time.monotonic() + REPLAY_SECONDS)
        finally:
            self._running.release()

    def _check(self, text: str, loaded: Table, bodies: list[tuple[str, bytes]],
               deadline: float) -> Check:
        try:
            table = parse_table(text, EDITOR_SOURCE, self.registry)
        except TableError as exc:
            return Check(exc.problems)
        events, before = self.loaded_lines(loaded, bodies, deadline)
        after = self.replay(table, events[:len(before)], deadline)
        done = len(after)
        changes = changed_events(before[:done], after)
        return Check([], len(table.rules), done, changes, left_out=len(events) - done)


def clamp_last(raw: str | None) -> int:
    """How many recent alerts to replay, from a form value (bounded)."""
    try:
        value = int(raw or DEFAULT_LAST)
    except ValueError:
        return DEFAULT_LAST
    return max(1, min(MAX_LAST, value))
