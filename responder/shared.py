"""State that several workers or replicas must agree on: idempotency keys, coalescing
windows and rate limits. Local (SQLite, one replica) or Redis (every replica)."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Protocol

from .store import EventStore

logger = logging.getLogger(__name__)


class SharedState(Protocol):
    def first_seen(self, key: str, seconds: float) -> bool:
        """True the first time `key` is seen within `seconds`, across everyone sharing."""

    def forget(self, key: str) -> None:
        """Undo `first_seen` for an event this replica had to drop, so a resend counts."""

    def open_window(self, key: str, seconds: float, member: str | None = None) -> int:
        """Count an occurrence; 1 means this one opened a new window of `seconds`, or that
        `member` (an event's idempotency key) is the one that opened it: a retried event
        is never coalesced into its own window."""

    def close_window(self, key: str, member: str) -> None:
        """End `key`'s window early if `member` opened it (its response did nothing)."""

    def take_token(self, name: str, rate: float, burst: float) -> float:
        """0 when a token was taken from the bucket, else seconds to wait for one."""

    def allow_in_window(self, name: str, limit: int, seconds: float,
                        member: str | None = None) -> bool:
        """Record one occurrence if fewer than `limit` happened in the last `seconds`; a
        `member` (e.g. one pod's deletion) counts once however often it is retried."""


def report_dropped(store: EventStore, shared: SharedState | None, key: str | None) -> None:
    """Say that the cap dropped an event (at intake or as it is taken in), and let a
    resend count as new."""
    logger.error("queue full (%d unfinished events): dropped event %s (policy %s)",
                 store.max_pending, key, store.drop_policy)
    forget_dropped(shared, key)


def forget_dropped(shared: SharedState | None, key: str | None) -> None:
    """Undo `first_seen` for an event this replica dropped, so a resend counts as new on
    every replica. A failure only costs that, so it is logged, never raised."""
    if shared is None or key is None:
        return
    try:
        shared.forget(key)
    except Exception as exc:  # noqa: BLE001 - e.g. Redis down
        logger.warning("cannot forget dropped event %s in the shared state (%s)", key,
                       type(exc).__name__)


class LocalState:
    """One replica: the event store's SQLite file is shared by its gunicorn workers."""

    def __init__(self, store: EventStore):
        self.store = store

    def first_seen(self, key: str, seconds: float) -> bool:
        return True  # the store's unique key already deduplicates on this replica

    def forget(self, key: str) -> None:
        pass  # a dropped event never reached the store's unique key

    def open_window(self, key: str, seconds: float, member: str | None = None) -> int:
        return self.store.open_window(key, seconds, member)

    def close_window(self, key: str, member: str) -> None:
        self.store.close_window(key, member)

    def take_token(self, name: str, rate: float, burst: float) -> float:
        return self.store.take_token(name, rate, burst)

    def allow_in_window(self, name: str, limit: int, seconds: float,
                        member: str | None = None) -> bool:
        return self.store.allow_in_window(name, limit, seconds, member)


# Token bucket, atomically in Redis: KEYS[1] bucket; ARGV rate, burst, now (seconds).
_TOKEN_BUCKET = """
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(state[1]) or burst
local updated = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'updated', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""
# Sliding window log: KEYS[1] zset; ARGV limit, window (ms), now (ms), member. A member
# already in the window is allowed again without counting twice.
_SLIDING_WINDOW = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, tonumber(ARGV[3]) - tonumber(ARGV[2]))
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# Coalescing window: KEYS[1] hash {opener, count}; ARGV window (ms), member. Returns the
# count in the window, or 1 to the member that opened it.
_WINDOW = """
local opener = redis.call('HGET', KEYS[1], 'opener')
if not opener then
  redis.call('HSET', KEYS[1], 'opener', ARGV[2], 'count', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return 1
end
if opener == ARGV[2] then return 1 end
return redis.call('HINCRBY', KEYS[1], 'count', 1)
"""


# KEYS[1] coalescing hash; ARGV[1] member: delete the window only if that member opened it.
_CLOSE_WINDOW = """
if redis.call('HGET', KEYS[1], 'opener') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisState:
    """Every replica pointing at the same Redis acts once per key/window/bucket."""

    def __init__(self, url: str, prefix: str = "falco-responder:"):
        import redis

        self.redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.prefix = prefix
        self._bucket = self.redis.register_script(_TOKEN_BUCKET)
        self._sliding = self.redis.register_script(_SLIDING_WINDOW)
        self._window = self.redis.register_script(_WINDOW)
        self._close = self.redis.register_script(_CLOSE_WINDOW)

    def first_seen(self, key: str, seconds: float) -> bool:
        return bool(self.redis.set(f"{self.prefix}seen:{key}", 1, nx=True,
                                   px=int(seconds * 1000)))

    def forget(self, key: str) -> None:
        self.redis.delete(f"{self.prefix}seen:{key}")

    def close_window(self, key: str, member: str) -> None:
        self._close(keys=[f"{self.prefix}coalesce:{key}"], args=[member])

    def open_window(self, key: str, seconds: float, member: str | None = None) -> int:
        # "coalesce:", not the former "window:" counters: a different Redis type.
        return int(self._window(keys=[f"{self.prefix}coalesce:{key}"],
                                args=[int(seconds * 1000), member or uuid.uuid4().hex]))

    def take_token(self, name: str, rate: float, burst: float) -> float:
        return float(self._bucket(keys=[f"{self.prefix}bucket:{name}"],
                                  args=[rate, burst, time.time()]))

    def allow_in_window(self, name: str, limit: int, seconds: float,
                        member: str | None = None) -> bool:
        now_ms = int(time.time() * 1000)
        return bool(self._sliding(keys=[f"{self.prefix}limit:{name}"],
                                  args=[limit, int(seconds * 1000), now_ms,
                                        member or uuid.uuid4().hex]))

    def close(self) -> None:
        self.redis.close()
