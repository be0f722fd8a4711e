"""The durable intake journal: SQLite in WAL mode, one row per accepted event.

The request path only inserts a row; the worker claims rows with a lease, records each
action's outcome as it happens, and marks the row finished. A restart therefore resumes
unfinished events and never repeats an action whose outcome was already recorded.

The one-replica shared state (coalescing windows, rate limits: `responder.localstate`)
lives in the same file and uses these connections and this write lock, but not this
module's tables.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import alerts
from .alerts import AlertSummary

logger = logging.getLogger(__name__)
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,          -- idempotency key: Sidekick uuid or content hash
    body BLOB NOT NULL,
    received REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending, running, awaiting-approval, done, failed
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    lease_until REAL,
    finished REAL,
    error TEXT,
    owner TEXT,                        -- the process holding the claim (responder.owners)
    audit_due INTEGER NOT NULL DEFAULT 0     -- 1: the `event` record is not yet logged
);
CREATE INDEX IF NOT EXISTS events_todo ON events (state, not_before, id);
-- The approval targets (table rule and target) each event awaiting a verdict covers: a gated
-- alert finds the approval it joins by this index, not by reading every waiting record.
-- Rows of events no longer waiting are ignored by the lookup and removed on the way.
CREATE TABLE IF NOT EXISTS approval_targets (
    target TEXT NOT NULL, event_id INTEGER NOT NULL, PRIMARY KEY (target, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outcomes (
    event_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    report TEXT NOT NULL,
    audit TEXT,                        -- the `decision` record's fields, until logged
    PRIMARY KEY (event_id, idx)
);
CREATE TABLE IF NOT EXISTS depth (one INTEGER PRIMARY KEY CHECK (one = 1), n INTEGER NOT NULL);
INSERT OR IGNORE INTO depth VALUES (1, 0);
-- Triggers keep the unfinished count, so the intake's cap check is O(1) at any depth.
CREATE TRIGGER IF NOT EXISTS depth_in AFTER INSERT ON events
    BEGIN UPDATE depth SET n = n + 1; END;
CREATE TRIGGER IF NOT EXISTS depth_out AFTER UPDATE OF state ON events
    WHEN NEW.state IN ('done', 'failed') AND OLD.state IN ('pending', 'running')
    BEGIN UPDATE depth SET n = n - 1; END;
-- An event awaiting approval is not in the queue (nothing to do until someone decides):
-- it leaves the count while it waits and comes back when it is due again.
CREATE TRIGGER IF NOT EXISTS depth_wait AFTER UPDATE OF state ON events
    WHEN NEW.state = 'awaiting-approval' AND OLD.state IN ('pending', 'running')
    BEGIN UPDATE depth SET n = n - 1; END;
CREATE TRIGGER IF NOT EXISTS depth_resume AFTER UPDATE OF state ON events
    WHEN OLD.state = 'awaiting-approval' AND NEW.state IN ('pending', 'running')
    BEGIN UPDATE depth SET n = n + 1; END;
CREATE TRIGGER IF NOT EXISTS depth_gone AFTER DELETE ON events
    WHEN OLD.state IN ('pending', 'running')
    BEGIN UPDATE depth SET n = n - 1; END;
-- How far each intake spool segment has been taken in, in the same commit as its events;
-- offset -1 once it is read to its end and removed (kept a while, so a reader that was
-- late cannot take it in again).
-- Each undo of an event (POST /events/<uuid>/undo), in order: who asked, when, and what
-- came of each action (responder.undo). Created on open, so older journals get it too.
CREATE TABLE IF NOT EXISTS undos (event_id INTEGER NOT NULL, seq INTEGER NOT NULL,
                                  record TEXT NOT NULL, PRIMARY KEY (event_id, seq));
CREATE TABLE IF NOT EXISTS spool_offsets (segment TEXT PRIMARY KEY, offset INTEGER NOT NULL,
                                          records INTEGER NOT NULL, finished REAL);
"""
# Added since the first release: a journal written by it gets them on open.
_ADDED_COLUMNS = (("events", "owner", "TEXT"),
                  ("events", "audit_due", "INTEGER NOT NULL DEFAULT 0"),
                  ("outcomes", "audit", "TEXT"),
                  # The approval record (responder.approvals) of an event that waits or
                  # waited for one; its deadline is `not_before` while it waits.
                  ("events", "approval", "TEXT"))
AWAITING = "awaiting-approval"
# Awaiting approval past the deadline (the events_todo index finds them).
_EXPIRED = f"WHERE state = '{AWAITING}' AND not_before <= ?"
# Due: pending and not deferred, or leased by a worker whose lease ran out (it died).
_DUE = ("WHERE (state = 'pending' AND not_before <= ?) "
        "OR (state = 'running' AND lease_until < ?)")
# Waits for the write lock, in seconds: SQLite's own busy handler sleeps 1, 2, 5, 10 ... ms,
# which alone would put the intake's p99 past 5 ms whenever the worker is committing.
_BUSY_WAITS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002)
_BUSY_GIVE_UP = 30.0


@dataclass(frozen=True)
class Claimed:
    id: int
    key: str
    body: bytes
    attempts: int
    received: float
    #: The lease this claim set; `still_ours` checks that nobody claimed the event since.
    lease_until: float = 0.0


@dataclass(frozen=True)
class Closing:
    """An event's final state, with the outcomes still to be written beside it (and the
    decision records of those outcomes, logged once this commits)."""

    event_id: int
    state: str
    error: str | None
    outcomes: dict[int, dict[str, Any]]
    audits: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: With state AWAITING: the approval record to keep (its deadline becomes not_before).
    approval: dict[str, Any] | None = None
    #: What the console's timeline shows of a finished event (responder.alerts), kept in
    #: the same commit; None for an event that could not be read, or not finished.
    summary: AlertSummary | None = None


@dataclass(frozen=True)
class AuditDue:
    """An event's audit records not yet logged: its `event` record (when `body` is set)
    and its `decision` records, in plan order."""

    event_id: int
    body: bytes | None
    decisions: list[tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class Recorded:
    """An event as the journal has it, for undoing it: its state, body, action outcomes
    (in plan order) and its undos so far (oldest first)."""

    id: int
    key: str
    state: str
    body: bytes
    outcomes: list[dict[str, Any]]
    undos: list[dict[str, Any]]


@dataclass(frozen=True)
class Added:
    """What happened to an event at intake: stored, already known, or dropped by the cap."""

    status: str  # "queued", "duplicate" or "dropped"
    dropped_key: str | None = None


class EventStore:
    """Thread-safe (one SQLite connection per thread) and shared by processes on one host."""

    def __init__(self, directory: str | Path, max_pending: int = 100_000,
                 drop_policy: str = "drop-new", clock: Callable[[], float] = time.time):
        self.path = Path(directory) / "events.sqlite3"
        self.max_pending = max_pending
        self.drop_policy = drop_policy
        self.clock = clock
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # One writer at a time inside this process: threads queue on a lock that wakes them
        # at once, instead of SQLite's busy handler, which sleeps in 1-100 ms steps.
        self._write_lock = threading.Lock()
        self._ready = False
        self._read_only = False  # a connection was opened while the file was read-only
        self._generation = 0  # of the connections; _reopen_all starts a new one
        try:
            self.connection()
        except (OSError, sqlite3.Error) as exc:
            # A full or read-only volume must not stop a process from starting: it answers
            # 507 meanwhile, and the journal is set up on first use once there is room.
            logger.error("cannot open the journal %s now (%s); trying again on use",
                         self.path, exc)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection to the journal's file (opened, and the schema set up,
        on first use). `responder.localstate` keeps its tables in the same file."""
        conn = getattr(self._local, "conn", None)
        if self._read_only and os.access(self.path, os.W_OK):
            self._reopen_all()
        if conn is not None and self._local.generation != self._generation:
            conn = None  # closed by _reopen_all
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # timeout=0: lock waits are ours (see _BUSY_WAITS), not SQLite's coarse sleeps.
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                   check_same_thread=False)
            try:
                retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"))
                # NORMAL: a commit survives a process crash at once; the WAL reaches the
                # disk at each checkpoint, which `sync` runs on a timer (batched fsyncs).
                conn.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                conn.close()
                raise
            with self._lock:
                self._local.conn, self._local.generation = conn, self._generation
                self._connections.append(conn)
                self._read_only = self._read_only or not os.access(self.path, os.W_OK)
        if not self._ready:
            retry_busy(lambda: conn.executescript(SCHEMA + alerts.SCHEMA))
            _add_columns(conn)
            _index_approval_targets(conn)
            self._ready = True
        return conn

    def _reopen_all(self) -> None:
        """The volume is writable again, but connections opened while it was read-only
        stay so, and SQLite shares their read-only WAL index with every connection of this
        process to the file: all of them are closed, each thread opens its own again."""
        # Not in the middle of another thread's transaction (bounded: never a deadlock).
        if not self._write_lock.acquire(timeout=5):
            return
        try:
            with self._lock:
                if not self._read_only:
                    return
                for conn in self._connections:
                    conn.close()
                self._connections.clear()
                self._generation += 1
                self._read_only = False
        finally:
            self._write_lock.release()
        logger.warning("the journal %s is writable again", self.path)

    def transaction(self, conn: sqlite3.Connection | None = None) -> _transaction:
        """A write transaction, queued behind this process's other writers to the file."""
        return _transaction(conn or self.connection(), self._write_lock)

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # --- intake --------------------------------------------------------------------
    def add(self, key: str, body: bytes) -> Added:
        """Record an event durably unless its key is known; honour the cap's drop policy."""
        conn = self.connection()
        with self.transaction(conn):
            return self._insert(conn, key, body)

    def _insert(self, conn: sqlite3.Connection, key: str, body: bytes,
                keep_dropped: bool = False) -> Added:
        # The common case in one statement: a new key, with room in the queue.
        if conn.execute("INSERT OR IGNORE INTO events (key, body, received) SELECT ?, ?, ? "
                        "WHERE (SELECT n FROM depth) < ?",
                        (key, body, self.clock(), self.max_pending)).rowcount:
            return Added("queued")
        if conn.execute("SELECT 1 FROM events WHERE key = ?", (key,)).fetchone():
            return Added("duplicate")
        if self.drop_policy == "drop-new":
            if keep_dropped:  # answered "queued" already: its status must say what became of it
                conn.execute("INSERT INTO events (key, body, received) VALUES (?, ?, ?)",
                             (key, body, self.clock()))
                conn.execute("UPDATE events SET state = 'failed', finished = ?, error = ? "
                             "WHERE key = ?", (self.clock(), "dropped: queue full", key))
            return Added("dropped", key)
        dropped = self._drop_oldest(conn)
        conn.execute("INSERT INTO events (key, body, received) VALUES (?, ?, ?)",
                     (key, body, self.clock()))
        return Added("queued", dropped)

    # --- the intake spool ------------------------------------------------------------
    def spool_offset(self, segment: str, conn: sqlite3.Connection | None = None) -> int:
        """Bytes of `segment` taken in so far; -1 once it is finished."""
        row = (conn or self.connection()).execute(
            "SELECT offset FROM spool_offsets WHERE segment = ?", (segment,)).fetchone()
        return row[0] if row else 0

    def take_in(self, segment: str, start: int, end: int,
                records: list[tuple[str, bytes]]) -> list[Added] | None:
        """Insert a segment's records read from byte `start` and move its offset to `end`,
        in one commit; None if another process took them in first."""
        with self.transaction() as conn:
            if self.spool_offset(segment, conn) != start:
                return None
            added = [self._insert(conn, key, body, keep_dropped=True) for key, body in records]
            conn.execute("INSERT INTO spool_offsets VALUES (?, ?, ?, NULL) ON CONFLICT (segment) "
                         "DO UPDATE SET offset = excluded.offset, "
                         "records = records + excluded.records", (segment, end, len(records)))
        return added

    def spooled_records(self, segments: list[str]) -> dict[str, int]:
        """How many records of each named segment are in the journal."""
        marks = ",".join("?" * len(segments))
        return dict(self.connection().execute(
            f"SELECT segment, records FROM spool_offsets WHERE segment IN ({marks})",
            segments).fetchall()) if segments else {}

    def finish_segment(self, segment: str) -> None:
        """Mark a segment read to its end, durably (the caller deletes the file next: its
        events must be on disk in the journal first, not only in the page cache)."""
        conn = self.connection()
        conn.execute("PRAGMA synchronous=FULL")  # this commit fsyncs the WAL, and all before
        try:
            with self.transaction(conn):
                conn.execute("INSERT INTO spool_offsets VALUES (?, -1, 0, ?) ON CONFLICT "
                             "(segment) DO UPDATE SET offset = -1, finished = excluded.finished",
                             (segment, self.clock()))
        finally:
            conn.execute("PRAGMA synchronous=NORMAL")

    def _drop_oldest(self, conn: sqlite3.Connection) -> str | None:
        row = conn.execute("SELECT id, key FROM events WHERE state = 'pending' "
                           "ORDER BY id LIMIT 1").fetchone()
        if row:
            conn.execute("UPDATE events SET state = 'failed', finished = ?, error = ? "
                         "WHERE id = ?", (self.clock(), "dropped: queue full", row[0]))
        return row[1] if row else None

    # --- worker --------------------------------------------------------------------
    def claim(self, limit: int, lease_seconds: float, owner: str | None = None
              ) -> list[Claimed]:
        """Take up to `limit` due events (or ones whose lease ran out, after a crash).

        Check each with `still_ours` just before processing it: a batch can outlive its
        lease, and another process may meanwhile have claimed what this one has not begun."""
        now = self.clock()
        lease_until = now + lease_seconds
        conn = self.connection()
        # A read first: an idle poll must not take the write lock the intake needs.
        if not conn.execute(f"SELECT id FROM events {_DUE} LIMIT 1", (now, now)).fetchone():
            return []
        with self.transaction(conn):
            rows = conn.execute(
                f"SELECT id, key, body, attempts, received FROM events {_DUE} "
                "ORDER BY id LIMIT ?",
                (now, now, limit)).fetchall()
            # A first claim owes the event's audit record, whatever happens to the claim.
            conn.executemany("UPDATE events SET state = 'running', lease_until = ?, "
                             "owner = ?, audit_due = audit_due OR attempts = 0, "
                             "attempts = attempts + 1 WHERE id = ?",
                             [(lease_until, owner, r[0]) for r in rows])
        return [Claimed(r[0], r[1], bytes(r[2]), r[3] + 1, r[4], lease_until) for r in rows]

    def still_ours(self, item: Claimed, lease_seconds: float) -> bool:
        """Renew a claimed event's lease unless it ran out and another worker claimed the
        event since (or finished it); False then, and the event is theirs."""
        if self.clock() < item.lease_until - lease_seconds / 2:
            # Claimed moments ago: nobody can have taken it (only expired leases are
            # claimed), and half a lease is left, renewed by heartbeats in a long action.
            # This saves a commit per event in a busy batch.
            return True
        with self.transaction() as conn:
            return conn.execute(
                "UPDATE events SET lease_until = ? WHERE id = ? AND state = 'running' "
                "AND lease_until = ?",
                (self.clock() + lease_seconds, item.id, item.lease_until)).rowcount == 1

    def renew(self, event_id: int, lease_seconds: float) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE events SET lease_until = ? WHERE id = ?",
                         (self.clock() + lease_seconds, event_id))

    def record(self, event_id: int, index: int, report: dict[str, Any],
               lease_seconds: float | None = None, audit: dict[str, Any] | None = None
               ) -> None:
        """Remember one action's outcome as soon as it is known (renewing the lease in the
        same commit when `lease_seconds` is given), with its decision record to log."""
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO outcomes (event_id, idx, report, audit) "
                         "VALUES (?, ?, ?, ?)",
                         (event_id, index, json.dumps(report), _json_or_none(audit)))
            if lease_seconds is not None:
                conn.execute("UPDATE events SET lease_until = ? WHERE id = ?",
                             (self.clock() + lease_seconds, event_id))

    def recorded(self, event_id: int) -> dict[int, dict[str, Any]]:
        rows = self.connection().execute("SELECT idx, report FROM outcomes WHERE event_id = ?",
                                    (event_id,)).fetchall()
        return {idx: json.loads(report) for idx, report in rows}

    def finish(self, event_id: int, state: str = "done", error: str | None = None,
               outcomes: dict[int, dict[str, Any]] | None = None,
               summary: AlertSummary | None = None) -> None:
        """Close an event, writing in the same commit the outcomes not yet recorded (those
        that touched no cluster, so nothing is lost if they are computed again)."""
        self.finish_many([Closing(event_id, state, error, outcomes or {}, summary=summary)])

    def finish_many(self, closings: list[Closing]) -> None:
        """Close several events in one commit (a worker's batch)."""
        if not closings:
            return
        now = self.clock()
        with self.transaction() as conn:
            conn.executemany("INSERT OR REPLACE INTO outcomes (event_id, idx, report, audit) "
                             "VALUES (?, ?, ?, ?)",
                             [(c.event_id, i, json.dumps(r), _json_or_none(c.audits.get(i)))
                              for c in closings for i, r in c.outcomes.items()])
            conn.executemany("UPDATE events SET state = ?, finished = ?, error = ?, "
                             "lease_until = NULL WHERE id = ?",
                             [(c.state, now, c.error, c.event_id) for c in closings
                              if c.approval is None])
            # Waiting is not finished: no `finished` time (prune keeps it), due at the deadline.
            conn.executemany("UPDATE events SET state = ?, finished = NULL, error = NULL, "
                             "lease_until = NULL, not_before = ?, approval = ? WHERE id = ?",
                             [(c.state, c.approval["deadline"], json.dumps(c.approval),
                               c.event_id) for c in closings if c.approval is not None])
            conn.executemany("INSERT OR IGNORE INTO approval_targets (target, event_id) "
                             "VALUES (?, ?)",
                             [(str(target), c.event_id) for c in closings
                              if c.approval is not None
                              for target in c.approval.get("targets", [])])
            alerts.write_summaries(conn, [(c.event_id, c.state, c.summary) for c in closings
                                          if c.summary is not None and c.approval is None])

    # --- approvals -----------------------------------------------------------------
    def approval(self, event_id: int) -> dict[str, Any] | None:
        """The approval record of an event (None: it never waited for one)."""
        row = self.connection().execute("SELECT approval FROM events WHERE id = ?",
                                        (event_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def decide(self, key: str, verdict: dict[str, Any]
               ) -> tuple[bool, str, dict[str, Any] | None] | None:
        """Give an event awaiting approval its verdict and make it due now, in one commit.
        None for an unknown key; else (decided, state, approval record): decided is False
        when the event was not awaiting (never asked, decided already, timed out)."""
        with self.transaction() as conn:
            row = conn.execute("SELECT id, state, approval FROM events WHERE key = ?",
                               (key,)).fetchone()
            if row is None:
                return None
            approval = json.loads(row[2]) if row[2] else None
            if row[1] != AWAITING or approval is None or approval.get("verdict"):
                return False, row[1], approval
            approval["verdict"] = verdict
            conn.execute("UPDATE events SET state = 'pending', not_before = 0, approval = ? "
                         "WHERE id = ?", (json.dumps(approval), row[0]))
            return True, "pending", approval

    def expire_approvals(self, verdict_for: Callable[[dict[str, Any]], dict[str, Any]]
                         ) -> list[str]:
        """Events whose approval deadline passed get `verdict_for(record)` and are due now;
        returns their keys. An idle poll only reads (the write lock is the intake's)."""
        now = self.clock()
        conn = self.connection()
        if not conn.execute(f"SELECT id FROM events {_EXPIRED} LIMIT 1", (now,)).fetchone():
            return []
        with self.transaction(conn):
            rows = conn.execute(f"SELECT id, key, approval FROM events {_EXPIRED}",
                                (now,)).fetchall()
            for event_id, _, text in rows:
                approval = json.loads(text)
                approval["verdict"] = verdict_for(approval)
                conn.execute("UPDATE events SET state = 'pending', not_before = 0, "
                             "approval = ? WHERE id = ?", (json.dumps(approval), event_id))
        return [row[1] for row in rows]

    def update_approval(self, key: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Merge `changes` into an event's approval record (e.g. its Slack message);
        the record as now stored, None if there is none."""
        with self.transaction() as conn:
            row = conn.execute("SELECT id, approval FROM events WHERE key = ?",
                               (key,)).fetchone()
            if row is None or not row[1]:
                return None
            approval = {**json.loads(row[1]), **changes}
            conn.execute("UPDATE events SET approval = ? WHERE id = ?",
                         (json.dumps(approval), row[0]))
            return approval

    def awaiting_targets(self, wanted: Iterable[str]) -> dict[str, str]:
        """Which of the approval targets `wanted` events awaiting a verdict already cover
        (`targets` of their records), to the newest such event's key. Found by index
        (approval_targets): reading every waiting record cost 160 ms an alert with 10,000
        waiting."""
        wanted = list(dict.fromkeys(wanted))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        # CROSS JOIN: targets first (SQLite's planner would walk every waiting event).
        rows = self.connection().execute(
            "SELECT a.target, e.key FROM approval_targets a CROSS JOIN events e "
            f"ON e.id = a.event_id WHERE a.target IN ({marks}) AND e.state = '{AWAITING}' "
            "AND json_extract(e.approval, '$.verdict') IS NULL "
            # The record itself must name the target: a row left by a version that pruned
            # events without their index rows may point at a reused id.
            "AND EXISTS (SELECT 1 FROM json_each(e.approval, '$.targets') t "
            "WHERE t.value = a.target) ORDER BY e.id", wanted).fetchall()
        return dict(rows)

    def awaiting_unannounced(self) -> list[tuple[bytes, dict[str, Any]]]:
        """Events awaiting approval whose Slack message was never posted (Slack failed, or
        the process stopped first): body and approval record."""
        rows = self.connection().execute(
            f"SELECT body, approval FROM events WHERE state = '{AWAITING}' "
            "ORDER BY id").fetchall()
        found = [(bytes(body), json.loads(text)) for body, text in rows if text]
        return [(body, record) for body, record in found if not record.get("slack")]

    def awaiting_records(self, expired: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """Events awaiting approval (only those past their deadline with `expired`): key and
        approval record, oldest first."""
        where = _EXPIRED if expired else f"WHERE state = '{AWAITING}'"
        params = (self.clock(),) if expired else ()
        rows = self.connection().execute(
            f"SELECT key, approval FROM events {where} ORDER BY id", params).fetchall()
        return [(key, json.loads(text)) for key, text in rows if text]

    def awaiting_keys(self) -> list[str]:
        """The keys of events awaiting approval (the events_todo index finds them)."""
        return [row[0] for row in self.connection().execute(
            f"SELECT key FROM events WHERE state = '{AWAITING}'").fetchall()]

    def approval_state(self, key: str) -> tuple[str, dict[str, Any] | None] | None:
        """An event's state and approval record (None: unknown on this replica)."""
        row = self.connection().execute("SELECT state, approval FROM events WHERE key = ?",
                                        (key,)).fetchone()
        if row is None:
            return None
        return row[0], json.loads(row[1]) if row[1] else None

    def awaiting(self) -> int:
        """How many events await approval (not in `pending`, but bounded by the same cap)."""
        return self.connection().execute(
            f"SELECT COUNT(*) FROM events WHERE state = '{AWAITING}'").fetchone()[0]

    # --- the audit trail: records logged once, after the commit that makes them true --
    def audit_due(self, event_ids: list[int]) -> list[AuditDue]:
        """The audit records of these events not yet logged, in `event_ids` order."""
        if not event_ids:
            return []
        conn = self.connection()
        marks = ",".join("?" * len(event_ids))
        bodies = dict(conn.execute(f"SELECT id, body FROM events WHERE id IN ({marks}) "
                                   "AND audit_due = 1", event_ids).fetchall())
        decisions: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        for event_id, idx, audit in conn.execute(
                f"SELECT event_id, idx, audit FROM outcomes WHERE event_id IN ({marks}) "
                "AND audit IS NOT NULL ORDER BY event_id, idx", event_ids):
            decisions.setdefault(event_id, []).append((idx, json.loads(audit)))
        return [AuditDue(i, bytes(bodies[i]) if i in bodies else None, decisions.get(i, []))
                for i in event_ids if i in bodies or i in decisions]

    def audited(self, logged: list[AuditDue]) -> None:
        """Mark records as logged (one commit for a batch)."""
        if not logged:
            return
        with self.transaction() as conn:
            conn.executemany("UPDATE events SET audit_due = 0 WHERE id = ?",
                             [(d.event_id,) for d in logged if d.body is not None])
            conn.executemany("UPDATE outcomes SET audit = NULL WHERE event_id = ? AND idx = ?",
                             [(d.event_id, idx) for d in logged for idx, _ in d.decisions])

    def unaudited_finished(self, alive: Callable[[str], bool]) -> list[int]:
        """Finished events with records not yet logged whose worker is gone (it died
        between its closing commit and its log lines)."""
        rows = self.connection().execute(
            "SELECT id, owner FROM events WHERE state IN ('done', 'failed', 'awaiting-approval') "
            "AND (audit_due = 1 "
            "OR id IN (SELECT event_id FROM outcomes WHERE audit IS NOT NULL)) "
            "ORDER BY id").fetchall()
        return [event_id for event_id, owner in rows if owner is None or not alive(owner)]

    def release_dead_claims(self, alive: Callable[[str], bool]) -> int:
        """Put back in the queue, due now, the events claimed by processes that are gone
        (instead of waiting out their lease); returns how many."""
        owners = [row[0] for row in self.connection().execute(
            "SELECT DISTINCT owner FROM events WHERE state = 'running' AND owner IS NOT NULL")]
        dead = [owner for owner in owners if not alive(owner)]
        released = 0
        for owner in dead:
            with self.transaction() as conn:
                released += conn.execute(
                    "UPDATE events SET state = 'pending', not_before = 0, lease_until = NULL "
                    "WHERE state = 'running' AND owner = ?", (owner,)).rowcount
        return released

    def retry_later(self, event_id: int, delay: float, error: str) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE events SET state = 'pending', not_before = ?, error = ?, "
                         "lease_until = NULL WHERE id = ?",
                         (self.clock() + delay, error, event_id))

    # --- inspection and housekeeping ----------------------------------------------
    def pending(self) -> int:
        return self.connection().execute("SELECT n FROM depth").fetchone()[0]

    def oldest_pending_age(self) -> float:
        row = self.connection().execute("SELECT MIN(received) FROM events "
                                   "WHERE state IN ('pending', 'running')").fetchone()
        return max(0.0, self.clock() - row[0]) if row and row[0] is not None else 0.0

    def status(self, key: str) -> dict[str, Any] | None:
        row = self.connection().execute(
            "SELECT id, state, attempts, error, approval FROM events WHERE key = ?",
            (key,)).fetchone()
        if row is None:
            return None
        outcomes = self.recorded(row[0])
        status = {"uuid": key, "state": row[1], "attempts": row[2], "error": row[3],
                  "decisions": [outcomes[i] for i in sorted(outcomes)]}
        if row[4]:
            status["approval"] = json.loads(row[4])
        undos = self.undos(row[0])
        if undos:
            status["undos"] = undos
        return status

    # --- undo ------------------------------------------------------------------------
    def lookup(self, key: str) -> Recorded | None:
        """The event `key` with its outcomes and undos, or None when unknown."""
        row = self.connection().execute(
            "SELECT id, state, body FROM events WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        outcomes = self.recorded(row[0])
        return Recorded(row[0], key, row[1], bytes(row[2]),
                        [outcomes[i] for i in sorted(outcomes)], self.undos(row[0]))

    def undos(self, event_id: int) -> list[dict[str, Any]]:
        rows = self.connection().execute(
            "SELECT record FROM undos WHERE event_id = ? ORDER BY seq", (event_id,)).fetchall()
        return [json.loads(row[0]) for row in rows]

    def record_undo(self, event_id: int, record: dict[str, Any]) -> None:
        """Keep one undo of an event, after those before it."""
        with self.transaction() as conn:
            conn.execute("INSERT INTO undos (event_id, seq, record) SELECT ?, "
                         "COALESCE(MAX(seq), 0) + 1, ? FROM undos WHERE event_id = ?",
                         (event_id, json.dumps(record), event_id))

    def sync(self) -> None:
        """Checkpoint the WAL: the batched fsync that makes recent commits power-safe."""
        self.connection().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def prune(self, keep_seconds: float) -> int:
        """Forget finished events older than `keep_seconds` (their keys stop deduplicating)."""
        conn = self.connection()
        cutoff = self.clock() - keep_seconds
        with self.transaction(conn):
            conn.execute("DELETE FROM outcomes WHERE event_id IN (SELECT id FROM events "
                         "WHERE state IN ('done', 'failed') AND finished < ?)", (cutoff,))
            conn.execute("DELETE FROM undos WHERE event_id IN (SELECT id FROM events "
                         "WHERE state IN ('done', 'failed') AND finished < ?)", (cutoff,))
            gone = conn.execute("DELETE FROM events WHERE state IN ('done', 'failed') "
                                "AND finished < ?", (cutoff,)).rowcount
            conn.execute("DELETE FROM approval_targets WHERE event_id NOT IN (SELECT id FROM "
                         f"events WHERE state = '{AWAITING}')")
            alerts.prune_summaries(conn, cutoff)
            conn.execute("DELETE FROM spool_offsets WHERE finished < ?", (cutoff,))
        return gone


def _json_or_none(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)


def _index_approval_targets(conn: sqlite3.Connection) -> None:
    """Index the waiting events of a journal written before approval_targets (a few rows
    at most, once); only reads when none is missing. Whatever fails here (a read-only
    journal, a record that is not JSON) is logged: the journal still opens, and those
    events' approvals are only asked for again by a new alert."""
    missing = (f"FROM events e, json_each(e.approval, '$.targets') t WHERE e.state = "
               f"'{AWAITING}' AND e.approval IS NOT NULL AND json_valid(e.approval) "
               "AND NOT EXISTS (SELECT 1 FROM approval_targets a WHERE a.target = t.value "
               "AND a.event_id = e.id)")
    try:
        if conn.execute(f"SELECT 1 {missing} LIMIT 1").fetchone() is None:
            return
        retry_busy(lambda: conn.execute("INSERT OR IGNORE INTO approval_targets (target, "
                                        f"event_id) SELECT t.value, e.id {missing}"))
    except sqlite3.DatabaseError as exc:
        logger.warning("cannot index the events awaiting approval: %s", exc)


def _add_columns(conn: sqlite3.Connection) -> None:
    for table, column, kind in _ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            try:
                retry_busy(lambda t=table, c=column, k=kind:
                            conn.execute(f"ALTER TABLE {t} ADD COLUMN {c} {k}"))
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):  # another process added it first
                    raise


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK): writers queue instead of failing mid-way."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock):
        self.conn = conn
        self.lock = lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            _begin_immediate(self.conn)
        except BaseException:
            self.lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type, *exc: Any) -> None:
        try:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()


def _begin_immediate(conn: sqlite3.Connection) -> None:
    retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))


def retry_busy(statement: Callable[[], Any]) -> Any:
    """Run a statement that needs the write lock, waiting for another process's lock in
    short steps."""
    deadline = time.monotonic() + _BUSY_GIVE_UP
    for attempt in itertools.count():
        try:
            return statement()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(_BUSY_WAITS[min(attempt, len(_BUSY_WAITS) - 1)])
