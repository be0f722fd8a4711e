"""Shared state for one replica: coalescing windows, token buckets and sliding-window
limits in SQLite, beside the journal.

Every process of a replica (gunicorn workers, the queue worker) opens the same file, so
they agree on these as `RedisState` makes every replica agree. The tables live in the
journal's file to share its connections and its in-process write lock (one writer at a
time, without SQLite's coarse busy sleeps), but they are this module's alone.
"""

from __future__ import annotations

import sqlite3
import uuid

from .journal import EventStore, retry_busy
from .shared import RESERVED_PREFIX

SCHEMA = """
-- Coalescing windows remember the event that opened them, so its own retries still run.
CREATE TABLE IF NOT EXISTS coalescing (key TEXT PRIMARY KEY, opener TEXT NOT NULL,
                                       expires REAL NOT NULL, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, tokens REAL NOT NULL,
                                    updated REAL NOT NULL);
-- Sliding-window limits; a member (e.g. one pod's deletion, however often it is retried)
-- counts once per window.
CREATE TABLE IF NOT EXISTS limit_hits (name TEXT NOT NULL, member TEXT NOT NULL,
                                       at REAL NOT NULL, PRIMARY KEY (name, member));
CREATE INDEX IF NOT EXISTS limit_hits_by_time ON limit_hits (name, at);
-- Locks the replica's processes take in turn (e.g. to check and cordon a node).
CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY, token TEXT NOT NULL,
                                  expires REAL NOT NULL);
"""
#: Expired coalescing windows are deleted this often (a window that expired is only
#: replaced when its key comes again; the rest would pile up).
PRUNE_SECONDS = 60.0


class LocalState:
    """One replica: the journal's SQLite file is shared by its gunicorn workers."""

    def __init__(self, store: EventStore):
        self.store = store
        self._ready = False
        self._pruned = store.clock()

    def _connection(self) -> sqlite3.Connection:
        conn = self.store.connection()
        if not self._ready:
            retry_busy(lambda: conn.executescript(SCHEMA))
            self._ready = True
        return conn

    def first_seen(self, key: str, seconds: float) -> bool:
        return True  # the journal's unique key already deduplicates on this replica

    def forget(self, key: str) -> None:
        pass  # a dropped event never reached the journal's unique key

    def open_window(self, key: str, seconds: float, member: str | None = None) -> int:
        """Count an occurrence in `key`'s window; 1 means it opened a new window, or that
        `member` is the one that opened it (a retry of the opening event)."""
        now = self.store.clock()
        member = member or uuid.uuid4().hex
        conn = self._connection()
        with self.store.transaction(conn):
            if now - self._pruned >= PRUNE_SECONDS:
                conn.execute("DELETE FROM coalescing WHERE expires < ?", (now,))
                self._pruned = now
            row = conn.execute("SELECT expires, count, opener FROM coalescing WHERE key = ?",
                               (key,)).fetchone()
            if row is None or row[0] <= now:
                conn.execute("INSERT OR REPLACE INTO coalescing VALUES (?, ?, ?, 1)",
                             (key, member, now + seconds))
                return 1
            if row[2] == member:
                return 1
            conn.execute("UPDATE coalescing SET count = count + 1 WHERE key = ?", (key,))
            return row[1] + 1

    def close_window(self, key: str, member: str) -> None:
        with self.store.transaction(self._connection()) as conn:
            conn.execute("DELETE FROM coalescing WHERE key = ? AND opener = ?", (key, member))

    def reserve_in_window(self, name: str, limit: int, seconds: float,
                          member: str) -> str | None:
        """Hold a place in the window for something about to be tried: None when `limit`
        hits and held places fall in the last `seconds`; "" when `member` already counts
        (a retry); else a token that counts until `settle_in_window` settles it."""
        now = self.store.clock()
        conn = self._connection()
        with self.store.transaction(conn):
            conn.execute("DELETE FROM limit_hits WHERE name = ? AND at <= ?",
                         (name, now - seconds))
            if conn.execute("SELECT 1 FROM limit_hits WHERE name = ? AND member = ?",
                            (name, member)).fetchone():
                return ""
            count = conn.execute("SELECT COUNT(*) FROM limit_hits WHERE name = ?",
                                 (name,)).fetchone()
            if count[0] >= limit:
                return None
            token = RESERVED_PREFIX + uuid.uuid4().hex
            conn.execute("INSERT INTO limit_hits VALUES (?, ?, ?)", (name, token, now))
        return token

    def settle_in_window(self, name: str, token: str, member: str, happened: bool) -> None:
        """A held place becomes a hit of `member` if the thing happened, else it is freed."""
        if not token:
            return
        with self.store.transaction(self._connection()) as conn:
            if happened:
                # OR IGNORE: `member` may count already (a concurrent try of the same pod).
                conn.execute("UPDATE OR IGNORE limit_hits SET member = ? "
                             "WHERE name = ? AND member = ?", (member, name, token))
            conn.execute("DELETE FROM limit_hits WHERE name = ? AND member = ?", (name, token))

    def try_lock(self, name: str, seconds: float) -> str | None:
        """The lock `name` for at most `seconds`: a token to unlock it with, or None while
        another process of this replica holds it."""
        now = self.store.clock()
        token = uuid.uuid4().hex
        conn = self._connection()
        with self.store.transaction(conn):
            conn.execute("DELETE FROM locks WHERE name = ? AND expires <= ?", (name, now))
            taken = conn.execute("INSERT OR IGNORE INTO locks VALUES (?, ?, ?)",
                                 (name, token, now + seconds)).rowcount
        return token if taken else None

    def unlock(self, name: str, token: str) -> bool:
        """Release the lock if `token` still holds it; False when it had expired first."""
        with self.store.transaction(self._connection()) as conn:
            return bool(conn.execute("DELETE FROM locks WHERE name = ? AND token = ?",
                                     (name, token)).rowcount)

    def take_token(self, name: str, rate: float, burst: float) -> float:
        """Token bucket: 0 when a token was taken, else seconds until one is available."""
        now = self.store.clock()
        conn = self._connection()
        with self.store.transaction(conn):
            row = conn.execute("SELECT tokens, updated FROM buckets WHERE name = ?",
                               (name,)).fetchone()
            tokens = burst if row is None else min(burst, row[0] + (now - row[1]) * rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
            if wait == 0.0:
                tokens -= 1
            conn.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?)", (name, tokens, now))
        return wait
