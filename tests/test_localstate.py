"""One replica's shared state (coalescing windows, token buckets, sliding-window limits)
is kept beside the journal, in its file, but by its own module and in its own tables."""

from __future__ import annotations

import sqlite3

import pytest

from responder import journal, localstate
from responder.journal import EventStore
from responder.localstate import PRUNE_SECONDS, LocalState
from responder.shared import allow_in_window

LOCAL_TABLES = {"coalescing", "buckets", "limit_hits"}


@pytest.fixture
def clocked(tmp_path):
    now = [1000.0]
    store = EventStore(tmp_path, clock=lambda: now[0])
    yield store, LocalState(store), now
    store.close()


def tables(path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_the_journal_schema_holds_no_local_state_tables():
    assert not any(name in journal.SCHEMA for name in LOCAL_TABLES)
    assert all(name in localstate.SCHEMA for name in LOCAL_TABLES)


def test_local_state_tables_are_made_in_the_journal_file_on_first_use(clocked):
    store, state, _ = clocked
    assert tables(store.path).isdisjoint(LOCAL_TABLES)  # the journal alone does not make them
    state.close_window("rule|shop|web", "uuid-1")  # any first call works on a new file
    assert tables(store.path) >= LOCAL_TABLES


def test_windows_tokens_and_limits_follow_the_journal_clock(clocked):
    _, state, now = clocked
    assert [state.open_window("w", 30, "uuid-1"), state.open_window("w", 30, "uuid-2")] == [1, 2]
    assert state.open_window("w", 30, "uuid-1") == 1  # the opener's retry still acts
    now[0] += 31
    assert state.open_window("w", 30, "uuid-3") == 1  # expired: a new window
    assert [state.take_token("b", 1.0, 2), state.take_token("b", 1.0, 2)] == [0, 0]
    assert state.take_token("b", 1.0, 2) == pytest.approx(1.0)
    now[0] += 1
    assert state.take_token("b", 1.0, 2) == 0
    assert allow_in_window(state, "d", 1, 60, "pod-1") and not allow_in_window(state, "d", 1, 60)
    now[0] += 61
    assert allow_in_window(state, "d", 1, 60)


def test_expired_coalescing_windows_are_pruned_by_the_local_state(clocked):
    store, state, now = clocked
    for i in range(5):
        state.open_window(f"old-{i}", 10, "m")

    def keys():
        return {r[0] for r in store.connection().execute("SELECT key FROM coalescing")}

    now[0] += 11  # expired, but not yet swept: the sweep runs every PRUNE_SECONDS
    state.open_window("new-1", 10, "m")
    assert {f"old-{i}" for i in range(5)} <= keys()
    now[0] += PRUNE_SECONDS
    state.open_window("new-2", 10, "m")
    assert keys() == {"new-2"}
