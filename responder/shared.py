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

from .errors import ConfigError, ResponderError
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


def allow_in_window(shared: SharedState, name: str, limit: int, seconds: float,
                    member: str | None = None) -> bool:
    """Record one occurrence if fewer than `limit` happened in the last `seconds`; a `member`
    (e.g. one pod's deletion) counts once however often it is retried. A reservation settled
    at once, for limits that count an occurrence before it is tried."""
    member = member or uuid.uuid4().hex
    token = shared.reserve_in_window(name, limit, seconds, member)
    if token is None:
        return False
    shared.settle_in_window(name, token, member, happened=True)
    return True


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


# Token bucket, atomically in Redis: KEYS[1] bucket; ARGV rate, burst. The clock is the
# server's (TIME), one for every replica. The stored state is clamped, tokens to [0, burst]
# and `updated` to no later than now, so a tampered or corrupt bucket (`tokens -1e12`, a
# timestamp in the far future) costs at most one refill, never an endless wait.
_TOKEN_BUCKET = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens = tonumber(state[1]) or burst
local updated = tonumber(state[2]) or now
if tokens ~= tokens then tokens = 0 end
if updated ~= updated or updated > now then updated = now end
tokens = math.max(0, math.min(burst, tokens))
tokens = math.min(burst, tokens + (now - updated) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'updated', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""
# Sliding window log: KEYS[1] zset; ARGV limit, window (ms), member, token; the clock is
# the server's (TIME). Returns "" when the member is already in the window (a retry counts
# once), nil when the window is full, else the token, whose entry holds a place until it
# is settled. Entries from the future (tampered) are dropped and the key always gets its
# TTL back, so no stored entry can hold the limit shut for longer than the window.
_RESERVE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
redis.call('PEXPIRE', KEYS[1], window)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return '' end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return false end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return ARGV[4]
"""
# KEYS[1] zset; ARGV token, member, happened ("1"/"0"): the token's place becomes the
# member's (at the same time), or is freed. Removing the only entry deletes the key, so
# its TTL is carried over to the one made again.
_SETTLE = """
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not at then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], 'NX', at, ARGV[2])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return 1
"""
# KEYS[1] lock; ARGV[1] token: delete the lock only while that token holds it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Coalescing window: KEYS[1] hash {opener, count}; ARGV window (ms), member. Returns the
# count in the window, or 1 to the member that opened it. A window found without a TTL, or
# with one longer than a window (written by someone else), gets the window's: otherwise
# the key's pod would be coalesced away, never acted on again.
_WINDOW = """
local opener = redis.call('HGET', KEYS[1], 'opener')
if not opener then
  redis.call('HSET', KEYS[1], 'opener', ARGV[2], 'count', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return 1
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or ttl > tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if opener == ARGV[2] then return 1 end
return redis.call('HINCRBY', KEYS[1], 'count', 1)
"""


# KEYS[1] coalescing hash; ARGV[1] member: delete the window only if that member opened it.
_CLOSE_WINDOW = """
if redis.call('HGET', KEYS[1], 'opener') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


def bounded_wait(wait: float, rate: float, burst: float) -> float:
    """`wait` within [0, (1 + burst) / rate], the longest an honest bucket can ask for: a
    reply past it (a tampered Redis, a bug) must not put the caller to sleep for ever."""
    longest = (1 + burst) / rate
    if wait < 0:
        return 0.0
    if not wait <= longest:  # also NaN
        logger.warning("token bucket asked for a %s s wait; waiting %.3f s", wait, longest)
        return longest
    return wait


class RedisState:
    """Every replica pointing at the same Redis acts once per key/window/bucket."""

    def __init__(self, url: str, prefix: str = "falco-responder:", *,
                 username: str | None = None, password: str | None = None):
        import redis

        credentials = {"username": username, "password": password} if password else {}
        self.redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2,
                                          **credentials)
        self.prefix = prefix
        self._bucket = self.redis.register_script(_TOKEN_BUCKET)
        self._reserve = self.redis.register_script(_RESERVE)
        self._settle = self.redis.register_script(_SETTLE)
        self._window = self.redis.register_script(_WINDOW)
        self._close = self.redis.register_script(_CLOSE_WINDOW)
        self._unlock = self.redis.register_script(_UNLOCK)

    def first_seen(self, key: str, seconds: float) -> bool:
        name, ms = f"{self.prefix}seen:{key}", int(seconds * 1000)
        if self.redis.set(name, 1, nx=True, px=ms):
            return True
        # A key without a TTL was not written by a replica: give it one, or the event
        # would count as seen for ever.
        if self.redis.pttl(name) == -1:
            self.redis.pexpire(name, ms)
        return False

    def forget(self, key: str) -> None:
        self.redis.delete(f"{self.prefix}seen:{key}")

    def close_window(self, key: str, member: str) -> None:
        self._close(keys=[f"{self.prefix}coalesce:{key}"], args=[member])

    def open_window(self, key: str, seconds: float, member: str | None = None) -> int:
        # "coalesce:", not the former "window:" counters: a different Redis type.
        return int(self._window(keys=[f"{self.prefix}coalesce:{key}"],
                                args=[int(seconds * 1000), member or uuid.uuid4().hex]))

    def take_token(self, name: str, rate: float, burst: float) -> float:
        wait = float(self._bucket(keys=[f"{self.prefix}bucket:{name}"], args=[rate, burst]))
        return bounded_wait(wait, rate, burst)

    def reserve_in_window(self, name: str, limit: int, seconds: float,
                          member: str) -> str | None:
        token = self._reserve(keys=[f"{self.prefix}limit:{name}"],
                              args=[limit, int(seconds * 1000), member,
                                    RESERVED_PREFIX + uuid.uuid4().hex])
        return None if token is None else token.decode()

    def settle_in_window(self, name: str, token: str, member: str, happened: bool) -> None:
        if token:
            self._settle(keys=[f"{self.prefix}limit:{name}"],
                         args=[token, member, "1" if happened else "0"])

    def check(self) -> None:
        """At start: ConfigError if Redis refuses our credentials (no retry can fix that).
        Redis unreachable is only logged: events wait in the journal until it is back."""
        import redis

        try:
            self.redis.ping()
        except redis.AuthenticationError:
            raise ConfigError("RESPONDER_REDIS_PASSWORD: the shared Redis refused it (or "
                              "RESPONDER_REDIS_USERNAME)") from None
        except redis.ResponseError as exc:
            if "NOAUTH" not in str(exc) and "NOPERM" not in str(exc):
                raise
            raise ConfigError("RESPONDER_REDIS_PASSWORD: the shared Redis requires one "
                              "(NOAUTH) or denies this user PING") from None
        except redis.RedisError as exc:
            logger.warning("shared Redis not reachable at start (%s); actions wait for it",
                           type(exc).__name__)

    def try_lock(self, name: str, seconds: float) -> str | None:
        token = uuid.uuid4().hex
        taken = self.redis.set(f"{self.prefix}lock:{name}", token, nx=True,
                               px=max(1, int(seconds * 1000)))
        return token if taken else None

    def unlock(self, name: str, token: str) -> bool:
        return bool(self._unlock(keys=[f"{self.prefix}lock:{name}"], args=[token]))

    def close(self) -> None:
        self.redis.close()
