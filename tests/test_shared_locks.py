"""The shared lock (try_lock/unlock, acquire): one holder at a time among everyone sharing
the state, a release only by its holder, and an expiry that frees the lock of a holder that
died. The same for Redis (every replica) and SQLite (one replica's processes)."""

from __future__ import annotations

import time

import pytest

from responder.journal import EventStore
from responder.localstate import LocalState
from responder.shared import Contended, RedisState, acquire

from .redisserver import RedisServer


@pytest.fixture(params=["sqlite", "redis"])
def pair(request, tmp_path):
    """Two handles on one shared state, as two processes or replicas hold them."""
    if request.param == "sqlite":
        stores = [EventStore(tmp_path), EventStore(tmp_path)]
        yield [LocalState(s) for s in stores]
        for s in stores:
            s.close()
        return
    with RedisServer() as server:
        states = [RedisState(server.url), RedisState(server.url)]
        yield states
        for s in states:
            s.close()


def test_one_holder_at_a_time_until_it_unlocks(pair):
    first, second = pair
    token = first.try_lock("cordon", 30.0)
    assert token
    assert second.try_lock("cordon", 30.0) is None
    assert second.try_lock("other", 30.0)  # locks are by name
    assert first.unlock("cordon", token) is True
    assert second.try_lock("cordon", 30.0)


def test_only_the_holder_unlocks(pair):
    first, second = pair
    token = first.try_lock("cordon", 30.0)
    assert second.unlock("cordon", "not-the-token") is False
    assert second.try_lock("cordon", 30.0) is None
    assert first.unlock("cordon", token) is True
    assert first.unlock("cordon", token) is False  # released once


@pytest.mark.slow
def test_a_dead_holders_lock_expires(pair):
    first, second = pair
    stale = first.try_lock("cordon", 0.2)
    time.sleep(0.3)
    token = second.try_lock("cordon", 30.0)
    assert token
    assert first.unlock("cordon", stale) is False  # it cannot free the new holder's lock
    assert second.try_lock("cordon", 30.0) is None


def test_acquire_waits_for_the_lock_then_gives_up(pair):
    first, second = pair
    token = first.try_lock("cordon", 30.0)
    waits: list[float] = []

    def release_after_two(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            first.unlock("cordon", token)

    assert acquire(second, "cordon", 30.0, wait=10.0, sleep=release_after_two)
    assert len(waits) == 2
    with pytest.raises(Contended, match="'cordon' stayed taken for 0.05 s"):
        acquire(first, "cordon", 30.0, wait=0.05)
