"""State that several workers or replicas must agree on: idempotency keys, coalescing
windows and rate limits: the protocol, and Redis (every replica). One replica's own
state, in SQLite beside the journal, is `responder.localstate`."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from .errors import ResponderError
from .journal import EventStore

logger = logging.getLogger(__name__)
#: Marks a place held in a sliding-window limit, not yet a hit (never a pod uid or a key).
RESERVED_PREFIX = "reserved:"
#: How often a waiter asks for a taken lock again (jittered, so waiters do not pace each other).
LOCK_POLL_SECONDS = 0.02


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

    def reserve_in_window(self, name: str, limit: int, seconds: float,
                          member: str) -> str | None:
        """Hold a place for something about to be tried, so concurrent tries never exceed
        `limit`: None when the window is full; "" when `member` already counts (nothing to
        settle); else a token to pass to `settle_in_window`."""

    def settle_in_window(self, name: str, token: str, member: str, happened: bool) -> None:
        """Count the held place as `member` if the thing happened, else free it."""

    def try_lock(self, name: str, seconds: float) -> str | None:
        """Take the lock `name`, held for at most `seconds` (so a holder that died frees it):
        a token to unlock it with, or None while someone else holds it."""

    def unlock(self, name: str, token: str) -> bool:
        """Release the lock if `token` still holds it; False when it had expired first."""


class Contended(ResponderError):
    """Someone else (another replica or process) held a shared lock for too long: the work
    waiting for it is retried later, like a transient API failure."""


def acquire(shared: SharedState, name: str, seconds: float, wait: float,
            sleep: Callable[[float], None] = time.sleep) -> str:
    """Wait up to `wait` seconds for the lock `name` (see `try_lock`); its token, else
    Contended."""
    deadline = time.monotonic() + wait
    while (token := shared.try_lock(name, seconds)) is None:
        if time.monotonic() >= deadline:
            raise Contended(f"the shared lock {name!r} stayed taken for {wait:g} s")
        sleep(LOCK_POLL_SECONDS * random.uniform(0.5, 1.5))
    return token


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
# Sliding window log: KEYS[1] zset; ARGV limit, window (ms), now (ms), member, token.
# Returns "" when the member is already in the window (a retry counts once), nil when the
# window is full, else the token, whose entry holds a place until it is settled.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, tonumber(ARGV[3]) - tonumber(ARGV[2]))
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then return '' end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return false end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return ARGV[5]
"""
# KEYS[1] zset; ARGV token, member, happened ("1"/"0"): the token's place becomes the
# member's (at the same time), or is freed.
_SETTLE = """
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not at then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] == '1' then redis.call('ZADD', KEYS[1], 'NX', at, ARGV[2]) end
return 1
"""
# KEYS[1] lock; ARGV[1] token: delete the lock only while that token holds it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
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
        self._reserve = self.redis.register_script(_RESERVE)
        self._settle = self.redis.register_script(_SETTLE)
        self._window = self.redis.register_script(_WINDOW)
        self._close = self.redis.register_script(_CLOSE_WINDOW)
        self._unlock = self.redis.register_script(_UNLOCK)

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
        member = member or uuid.uuid4().hex
        token = self.reserve_in_window(name, limit, seconds, member)
        if token is None:
            return False
        self.settle_in_window(name, token, member, happened=True)
        return True

    def reserve_in_window(self, name: str, limit: int, seconds: float,
                          member: str) -> str | None:
        now_ms = int(time.time() * 1000)
        token = self._reserve(keys=[f"{self.prefix}limit:{name}"],
                              args=[limit, int(seconds * 1000), now_ms, member,
                                    RESERVED_PREFIX + uuid.uuid4().hex])
        return None if token is None else token.decode()

    def settle_in_window(self, name: str, token: str, member: str, happened: bool) -> None:
        if token:
            self._settle(keys=[f"{self.prefix}limit:{name}"],
                         args=[token, member, "1" if happened else "0"])

    def try_lock(self, name: str, seconds: float) -> str | None:
        token = uuid.uuid4().hex
        taken = self.redis.set(f"{self.prefix}lock:{name}", token, nx=True,
                               px=max(1, int(seconds * 1000)))
        return token if taken else None

    def unlock(self, name: str, token: str) -> bool:
        return bool(self._unlock(keys=[f"{self.prefix}lock:{name}"], args=[token]))

    def close(self) -> None:
        self.redis.close()
