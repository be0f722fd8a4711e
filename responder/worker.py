"""The worker: takes recorded events from the journal and runs their actions."""

from __future__ import annotations

import logging
import random
import threading

from .actions import Outcome, Result
from .errors import EventError
from .events import parse_event
from .executor import ActionReport
from .service import Responder, log_received
from .store import Claimed, EventStore

logger = logging.getLogger(__name__)
LEASE_SECONDS = 60.0


def touched_cluster(report: ActionReport) -> bool:
    """Whether an outcome came from a live action (as opposed to dry-run, a plan-time skip
    or coalescing, which the same table and event reproduce exactly)."""
    decision, outcome = report.decision, report.result.outcome
    return not (decision.dry_run or decision.skip_reason
                or outcome in (Outcome.WOULD_RUN, Outcome.COALESCED))


class Worker:
    """Processes due events. One per process; several processes share the journal safely."""

    def __init__(self, responder: Responder, store: EventStore, max_attempts: int = 20,
                 batch: int = 50, poll_seconds: float = 0.2, sync_seconds: float = 0.1,
                 retention_seconds: float = 86400.0, lease_seconds: float = LEASE_SECONDS):
        self.responder = responder
        self.store = store
        self.max_attempts = max_attempts
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.sync_seconds = sync_seconds
        self.retention_seconds = retention_seconds
        self.lease_seconds = lease_seconds
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def run_pending(self) -> int:
        """Process every event that is due now; returns how many were handled."""
        handled = 0
        while claimed := self.store.claim(self.batch, self.lease_seconds):
            for item in claimed:
                if not self.store.still_ours(item, self.lease_seconds):
                    continue  # its lease ran out while earlier ones ran: another worker has it
                self.process(item)
                handled += 1
        return handled

    def process(self, item: Claimed) -> None:
        try:
            event = parse_event(item.body)
        except EventError as exc:  # validated at intake; only a corrupted row gets here
            self.store.finish(item.id, "failed", f"unreadable event: {exc}")
            return
        if item.attempts == 1:
            log_received(event)  # the audit record, once, as the event leaves the queue
        plan = self.responder.plan(event)
        prior = {i: Result(Outcome(d["outcome"]), d.get("reason"))
                 for i, d in self.store.recorded(item.id).items()}
        last_try = item.attempts >= self.max_attempts
        deferred: dict[int, dict] = {}

        def record(index: int, report: ActionReport) -> None:
            if report.result.retryable and not last_try:
                return  # a transient failure is not final unless this was the last try
            if touched_cluster(report):
                # Durable at once: after a crash this action must not run again.
                self.store.record(item.id, index, report.to_dict(), self.lease_seconds)
            else:
                deferred[index] = report.to_dict()  # recomputed identically if lost

        # Coalescing on every try: a window knows the event that opened it, so a retry (or a
        # restart after a crash) acts for the opener and stays coalesced for the others.
        reports = self.responder.executor.execute(plan, prior, record)
        transient = [r for r in reports if r.result.retryable]
        if transient and not last_try:
            self._retry_later(item, transient[0].result.reason or "transient failure")
            return
        failed = any(r.result.outcome is Outcome.FAILED for r in reports)
        self.store.finish(item.id, "failed" if failed else "done", outcomes=deferred)
        self.responder.after_actions(plan, reports)

    def _retry_later(self, item: Claimed, reason: str) -> None:
        delay = random.uniform(0.5, 1.0) * min(60.0, 2.0 ** (item.attempts - 1))
        logger.warning("event %s: transient failure (%s); try %d of %d again in %.1f s",
                       item.key, reason, item.attempts, self.max_attempts, delay)
        self.responder.metrics.retries.inc()
        self.store.retry_later(item.id, delay, reason)

    # --- background threads ----------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._loop, "event-worker"), (self._housekeeping, "journal-sync")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_pending()
            except Exception:  # noqa: BLE001 - the worker must survive; the row stays leased
                logger.exception("worker loop failed; retrying")
            # Woken at once by our own intake; the poll catches other processes' events.
            self.wake.wait(self.poll_seconds)
            self.wake.clear()

    def _housekeeping(self) -> None:
        pruned_at = 0.0
        while not self._stop.wait(self.sync_seconds):
            try:
                self.store.sync()
                pruned_at += self.sync_seconds
                if pruned_at >= 60:
                    pruned_at = 0.0
                    self.store.prune(self.retention_seconds)
            except Exception:  # noqa: BLE001
                logger.exception("journal housekeeping failed")
