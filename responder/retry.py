"""Retrying Kubernetes calls: which failures are transient, and how long to wait."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis
import tenacity
import urllib3
from kubernetes.client.exceptions import ApiException

from .shared import Contended

T = TypeVar("T")
RETRYABLE_STATUSES = {0, 409, 429, 500, 502, 503, 504}


def is_retryable(exc: BaseException) -> bool:
    """Conflicts, throttling, server errors and connection failures pass; 4xx refusals don't."""
    if isinstance(exc, ApiException):
        return (exc.status or 0) in RETRYABLE_STATUSES
    if isinstance(exc, Contended):
        return True  # someone else held a shared lock: it is free again later
    # Redis (shared limits, the request throttle) being unreachable is an outage, too.
    return isinstance(exc, urllib3.exceptions.HTTPError | OSError | redis.exceptions.ConnectionError
                      | redis.exceptions.TimeoutError)


def retry_after(exc: BaseException | None) -> float | None:
    """Seconds from a Retry-After header (429/503), if the API server sent one."""
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """In-call retries: a few quick tries; longer outages are retried from the journal."""

    attempts: int = 4
    initial: float = 0.2
    maximum: float = 5.0
    #: How a wait between tries is spent; tests pass a recorder instead of sleeping.
    sleep: Callable[[float], None] | None = None

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter, as client-go and AWS recommend."""
        return random.uniform(0, min(self.maximum, self.initial * 2 ** (attempt - 1)))

    def wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = retry_after(exc)
        if hinted is not None:
            return min(hinted, self.maximum)
        return self.backoff(state.attempt_number)

    def call(self, fn: Callable[[], T], sleep: Callable[[float], None] | None = None) -> T:
        """fn() with retries on transient failures; the last exception propagates."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_retryable),
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self.wait,
            reraise=True,
            sleep=sleep or self.sleep or tenacity.nap.sleep,
        )
        return retrying(fn)
