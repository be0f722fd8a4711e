"""A tampered or corrupt shared Redis (anyone who reaches it can write keys) must not stop
containment: a poisoned token bucket gives a bounded wait and recovers, keys written without
a TTL get one, and the replicas' clocks do not matter (the server's TIME is used)."""

from __future__ import annotations

import math
import threading
import time

import pytest

from responder.shared import RedisState, allow_in_window, bounded_wait

from .netcat import delete_pod_table

PREFIX = "falco-responder:"



@pytest.fixture
def state(redis_server):
    made = RedisState(redis_server.url)
    made.redis.flushdb()
    yield made
    made.close()


@pytest.mark.parametrize("fields", [
    {"tokens": "-1e12"},
    {"tokens": "-1e12", "updated": "1e15"},
    {"tokens": "-inf", "updated": "-1e15"},
    {"tokens": "nan", "updated": "nan"},
], ids=["negative-tokens", "future-timestamp", "infinities", "nan"])
def test_a_poisoned_bucket_gives_a_bounded_wait_and_recovers(state, fields):
    state.redis.hset(f"{PREFIX}bucket:kube-api", mapping=fields)
    wait = state.take_token("kube-api", 20, 5)
    assert 0 <= wait <= 1 / 20  # an empty bucket, at worst: one token's refill
    time.sleep(wait + 0.02)
    assert state.take_token("kube-api", 20, 5) == 0
    tokens = float(state.redis.hget(f"{PREFIX}bucket:kube-api", "tokens"))
    assert 0 <= tokens <= 5


def test_a_bucket_holding_more_than_its_burst_is_cut_to_the_burst(state):
    state.redis.hset(f"{PREFIX}bucket:kube-api", mapping={"tokens": "1e12"})
    waits = [state.take_token("kube-api", 0.01, 3) for _ in range(4)]
    assert waits[:3] == [0, 0, 0] and waits[3] > 0


def test_a_replica_with_a_skewed_clock_gets_no_extra_tokens(state, monkeypatch):
    # With each replica's own clock, one an hour ahead refilled the whole burst every time
    # it followed the other; the server's clock is the same for both.
    real = time.time
    taken = []
    for i in range(12):
        skew = 3600 if i % 2 else 0
        monkeypatch.setattr(time, "time", lambda skew=skew: real() + skew)
        taken.append(state.take_token("kube-api", 0.01, 3))
    monkeypatch.setattr(time, "time", real)
    assert taken.count(0) == 3


def test_the_wait_is_capped_in_python_too():
    assert bounded_wait(5e10, 5, 10) == pytest.approx(11 / 5)
    assert bounded_wait(math.nan, 5, 10) == pytest.approx(11 / 5)
    assert bounded_wait(-3, 5, 10) == 0
    assert bounded_wait(0.1, 5, 10) == 0.1


def test_the_responder_keeps_acting_with_a_poisoned_bucket(redis_server, state, kube,
                                                          make_app, make_table):
    # The review's attack: one HSET, and every replica slept for 5e10 s per API call.
    app = make_app(make_table(delete_pod_table()), api_client=kube.api_client(),
                   redis_url=redis_server.url, kube_qps=5, kube_burst=10)
    state.redis.hset(f"{PREFIX}bucket:kube-api", mapping={"tokens": "-1e12"})
    throttle = threading.Thread(target=app.extensions["responder"]._throttle, daemon=True)
    started = time.monotonic()
    throttle.start()
    throttle.join(5)
    assert not throttle.is_alive()
    assert time.monotonic() - started <= 1 / 5 + 0.5


def test_a_coalescing_window_without_a_ttl_gets_one_and_expires(state):
    key = f"{PREFIX}coalesce:shop/web"
    state.redis.hset(key, mapping={"opener": "someone-else", "count": 7})  # no TTL
    assert state.open_window("shop/web", 0.3, "event-1") > 1  # coalesced, for now
    assert 0 < state.redis.pttl(key) <= 300
    time.sleep(0.35)
    assert state.open_window("shop/web", 0.3, "event-2") == 1  # acted on again


def test_a_coalescing_window_with_an_overlong_ttl_is_cut_to_the_window(state):
    key = f"{PREFIX}coalesce:shop/web"
    state.redis.hset(key, mapping={"opener": "someone-else", "count": 1})
    state.redis.expire(key, 10**9)
    state.open_window("shop/web", 0.3, "event-1")
    assert 0 < state.redis.pttl(key) <= 300


def test_a_limit_filled_from_the_future_does_not_stay_shut(state):
    key = f"{PREFIX}limit:pod-deletions"
    state.redis.zadd(key, {f"forged-{i}": 10**15 for i in range(5)})  # no TTL either
    assert allow_in_window(state, "pod-deletions", 5, 0.3, "shop/web") is True
    assert 0 < state.redis.pttl(key) <= 300


def test_a_limit_key_without_a_ttl_gets_one_even_when_full(state):
    key = f"{PREFIX}limit:pod-deletions"
    for i in range(2):
        assert allow_in_window(state, "pod-deletions", 2, 0.3, f"pod-{i}")
    state.redis.persist(key)
    assert allow_in_window(state, "pod-deletions", 2, 0.3, "pod-x") is False
    assert 0 < state.redis.pttl(key) <= 300


def test_a_seen_key_without_a_ttl_gets_one(state):
    key = f"{PREFIX}seen:u-1"
    state.redis.set(key, 1)
    assert state.first_seen("u-1", 0.3) is False
    assert 0 < state.redis.pttl(key) <= 300
    time.sleep(0.35)
    assert state.first_seen("u-1", 0.3) is True
