"""The worker: takes recorded events from the journal and runs their actions."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .actions import Outcome, Result
from .alerts import summarize
from .approvals import (
    APPROVED,
    REJECTED,
    TIMED_OUT,
    approval_target,
    approver_text,
    audit_note,
    gated_decisions,
    iso,
    new_record,
    timeout_verdict,
    verdict_reason,
)
from .decisions import Plan, resolve_target
from .errors import EventError
from .events import Event, parse_event
from .executor import ActionReport, decision_fields, log_decision_fields
from .journal import AWAITING, Added, Claimed, Closing, EventStore
from .logs import Trouble
from .notify.message import offers_undo
from .owners import owner_alive, process_owner
from .relay import Relay, UndoServer
from .service import Responder, log_received
from .shared import report_dropped
from .spool import read_segment, segments, writer_gone

logger = logging.getLogger(__name__)
LEASE_SECONDS = 60.0
TAKE_OVER_SECONDS = 5.0  # how often a running worker looks for claims of dead processes
#: Why an approved event's action does not run: the table changed while it waited.
NOT_SHOWN = ("not among the actions awaiting approval (the table changed while the event "
             "waited); not run")


def decision_slots(plan) -> list[str]:
    """A name for each decision that survives a table reload between two tries: table rule,
    action, and which of that rule's uses of the action it is (not its place in the plan)."""
    seen: dict[tuple[str, str], int] = {}
    slots = []
    for decision in plan.decisions:
        key = (decision.table_rule, decision.action)
        seen[key] = seen.get(key, 0) + 1
        slots.append(f"{decision.table_rule}:{decision.action}#{seen[key]}")
    return slots


def prior_results(plan, recorded) -> dict[int, Result]:
    """Outcomes of an earlier try, placed by slot: an action the current table no longer
    asks for is dropped, one it now asks for in another place is still not repeated."""
    index_of = {slot: i for i, slot in enumerate(decision_slots(plan))}
    prior = {}
    for stored in recorded:
        index = index_of.get(stored.get("slot"))
        if index is not None:
            prior[index] = Result(Outcome(stored["outcome"]), stored.get("reason"),
                                  details=stored.get("details"))
    return prior


@dataclass
class _Pass:
    """One event's processing: its plan, what is recorded, what waits for approval."""

    item: Claimed
    plan: Plan
    prior: dict[int, Result]
    #: Indices of the decisions that wait (or waited) for approval.
    gated: Mapping[int, Any]
    verdict: dict[str, Any] | None
    last_try: bool
    #: Outcomes the worker gives, not the executor (a verdict's skip, a decision coalesced
    #: into another event's approval): recorded by the worker.
    given: dict[int, Result] = field(default_factory=dict)
    deferred: dict[int, dict] = field(default_factory=dict)
    audits: dict[int, dict] = field(default_factory=dict)


def verdict_results(run: _Pass, record: Mapping[str, Any]) -> dict[int, Result]:
    """The skips a verdict gives the gated decisions not yet recorded: all of them when
    rejected or timed out; when approved, those that were not among the actions awaiting it
    (the table was reloaded meanwhile: a person approved what they were shown, no more)."""
    reason = verdict_reason(run.verdict)
    shown = {p.get("slot") for p in record.get("planned", [])}
    slots = decision_slots(run.plan)
    given = {}
    for index in run.gated:
        if index in run.prior:
            continue
        if reason:
            given[index] = Result(Outcome.SKIPPED, reason)
        elif slots[index] not in shown:
            given[index] = Result(Outcome.SKIPPED, NOT_SHOWN)
    return given


def touched_cluster(report: ActionReport) -> bool:
    """Whether an outcome came from a live action (as opposed to dry-run, a plan-time skip
    or coalescing, which the same table and event reproduce exactly)."""
    decision, outcome = report.decision, report.result.outcome
    return not (decision.dry_run or decision.skip_reason
                or outcome in (Outcome.WOULD_RUN, Outcome.COALESCED))


class Worker:
    """Processes due events. One per process; several processes share the journal safely."""

    def __init__(self, responder: Responder, store: EventStore, max_attempts: int = 20,
                 batch: int = 50, poll_seconds: float = 0.05, sync_seconds: float = 0.1,
                 retention_seconds: float = 86400.0, lease_seconds: float = LEASE_SECONDS,
                 spool_dir: Path | None = None, owner: str | None = None,
                 relay: Relay | None = None):
        self.responder = responder
        #: With several replicas: verdicts given on others, published waits and undos.
        self.relay = relay
        #: Serves the undos other replicas pass on (started and stopped with the threads).
        self.undo_server: UndoServer | None = None
        #: Events whose verdict in Redis is malformed (tampered): logged once each.
        self._malformed: set[str] = set()
        #: Written on each claim, so a worker started later can tell ours from a dead one's.
        self.owner = owner or process_owner()
        self.store = store
        self.spool_dir = spool_dir
        self.max_attempts = max_attempts
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.sync_seconds = sync_seconds
        self.retention_seconds = retention_seconds
        self.lease_seconds = lease_seconds
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: The events of the batch in hand, parsed once (for their audit records too).
        self._parsed: dict[int, Event] = {}
        #: What to do once the batch's closings are committed (approval requests).
        self._after_commit: list[Callable[[], None]] = []
        #: The batch's finished events (key, something to undo), published in one round trip.
        self._held: list[tuple[str, bool]] = []
        #: Approval targets (approvals.approval_target) this batch set waiting, to event keys.
        self._batch_targets: dict[str, str] = {}
        self._troubles = {name: Trouble(what, logger) for name, what in (
            ("ingest", "taking spooled events into the journal"),
            ("loop", "the worker loop"), ("sync", "journal housekeeping"))}

    def run_pending(self, deadline: float | None = None) -> int:
        """Take in what the intake spooled, then process every event that is due now (no
        new batch past `deadline`, a time.monotonic() value); returns how many were
        handled."""
        handled = 0
        self._ingest_safely()
        self.apply_remote_verdicts()
        self.expire_approvals()
        while (deadline is None or time.monotonic() < deadline) and \
                (claimed := self.store.claim(self.batch, self.lease_seconds, self.owner)):
            handled += self._run_batch(claimed)
            self._ingest_safely()  # what arrived meanwhile joins the queue behind older ones
        return handled

    def apply_remote_verdicts(self) -> list[str]:
        """Verdicts given on other replicas for our events awaiting approval (one MGET),
        applied as a local verdict is; returns their uuids."""
        if self.relay is None:
            return []
        keys = self.store.awaiting_keys()
        if not keys:
            return []
        import redis

        try:
            given = self.relay.verdicts(keys)
        except redis.RedisError as exc:
            self.relay.trouble.failed(exc)
            return []
        self.relay.trouble.passed()
        return [key for key, verdict in given.items() if self._apply_verdict(key, verdict)]

    def _apply_verdict(self, key: str, verdict: Any) -> bool:
        if not isinstance(verdict, dict) or verdict.get("decision") not in (
                APPROVED, REJECTED, TIMED_OUT) or not isinstance(verdict.get("by"), str):
            if key not in self._malformed:  # said once, not on every loop
                self._malformed.add(key)
                logger.error("event %s: the shared Redis holds a malformed verdict; ignored "
                             "(the event waits for its timeout)", key)
            return False
        found = self.store.decide(key, verdict)
        if not found or not found[0]:
            return False  # decided here meanwhile (ours took the same key first)
        logger.warning("event %s %s by %s (given on another replica)", key,
                       verdict["decision"], approver_text(verdict))
        self.responder.count_verdict(verdict)
        return True

    def _expire_through_relay(self) -> list[str]:
        """Our timeouts take the shared first-verdict key, so a click on another replica
        racing the deadline has exactly one winner; with Redis down, none is taken here and
        the local timeout applies (`expire_approvals`)."""
        import redis

        decided = []
        now = self.store.clock()
        for key, record in self.store.awaiting_records(expired=True):
            try:
                _, first = self.relay.first_verdict(key, timeout_verdict(record, now),
                                                    record["deadline"])
            except redis.RedisError as exc:
                self.relay.trouble.failed(exc)
                break
            if first.get("via") == "timeout":
                found = self.store.decide(key, first)
                if found and found[0]:
                    logger.warning("event %s: no approval in time; %s", key, audit_note(first))
                    self.responder.count_verdict(first)
                    decided.append(key)
            elif self._apply_verdict(key, first):
                decided.append(key)
        return decided

    def expire_approvals(self) -> list[str]:
        """Events whose approval deadline passed get the timeout's verdict (their rule's
        on_timeout) and are due now; returns their uuids."""
        relayed = self._expire_through_relay() if self.relay is not None else []
        return relayed + self._expire_here()

    def _expire_here(self) -> list[str]:
        given: list[dict[str, Any]] = []

        def verdict(record: dict[str, Any]) -> dict[str, Any]:
            given.append(timeout_verdict(record, self.store.clock()))
            return given[-1]
        expired = self.store.expire_approvals(verdict)
        for uuid, told in zip(expired, given, strict=True):
            logger.warning("event %s: no approval in time; %s", uuid, audit_note(told))
            self.responder.count_verdict(told)
        return expired

    def _run_batch(self, claimed: list[Claimed]) -> int:
        # One commit closes the batch: after a crash its events are planned again, and
        # only what touched no cluster is computed again (the rest was recorded at once).
        closings: list[Closing] = []
        handled: list[int] = []
        self._parsed.clear()
        self._batch_targets.clear()
        try:
            for item in claimed:
                if not self.store.still_ours(item, self.lease_seconds):
                    continue  # its lease ran out meanwhile: another worker has it
                try:
                    self.process(item, closings)
                except Exception as exc:  # noqa: BLE001 - one event must not stall the rest
                    logger.exception("event %s: processing failed", item.key)
                    self._give_back(item, f"{type(exc).__name__} while processing")
                handled.append(item.id)
                # A request waiting for this CPU gets it now, not when our time slice
                # ends: the intake's p99 at concurrency 1 went from ~4.6 to ~3.5 ms
                # with the server and this worker sharing 2 cores (bench/).
                os.sched_yield()
        finally:
            self.store.finish_many(closings)
        if self._held:
            held, keep = list(self._held), self.retention_seconds
            self._held.clear()
            self._publish(lambda relay: relay.publish_held(held, keep))
        for told in self._after_commit:
            try:
                told()
            except Exception:  # noqa: BLE001 - a Slack problem must not stall the worker
                logger.exception("after an approval request")
        self._after_commit.clear()
        # Logged once committed: a crash before this plans the batch again, and logs it
        # then; one after it leaves the records marked due, for the next worker to log.
        self.log_audit(handled)
        return len(handled)

    def log_audit(self, event_ids: list[int]) -> None:
        """Log the audit records these events owe (`event`, then its `decisions`), then
        mark them logged."""
        due = self.store.audit_due(event_ids)
        for item in due:
            if item.body is not None:
                with contextlib.suppress(EventError):  # a corrupted row: its error says so
                    log_received(self._parsed.get(item.event_id) or parse_event(item.body))
            for _, fields in item.decisions:
                log_decision_fields(fields)
        self.store.audited(due)

    def take_over(self) -> int:
        """At start: claims of processes that died are due again now, not when their lease
        runs out, and records they committed but never logged are logged. Returns how many
        claims were taken over."""
        released = self.store.release_dead_claims(owner_alive)
        if released:
            logger.warning("%d event(s) claimed by a worker that is gone are due again",
                           released)
        left = self.store.unaudited_finished(owner_alive)
        for start in range(0, len(left), 500):  # bounded by SQLite's variable limit
            self.log_audit(left[start:start + 500])
        self._announce_waiting()
        if self.relay is not None:
            # Redis may have been down when they started waiting, or lost what it held.
            for key, record in self.store.awaiting_records():
                self._publish(lambda relay, key=key, record=record:
                              relay.publish_awaiting(key, record, self.retention_seconds))
        return released

    def _announce_waiting(self) -> None:
        """Post the Slack message of events awaiting approval that never got one (Slack
        was down, or the process stopped between the commit and the post)."""
        if self.responder.notifier is None:
            return
        for body, record in self.store.awaiting_unannounced():
            with contextlib.suppress(EventError):  # a corrupted row: its timeout still runs
                self.responder.request_approval(parse_event(body), [], record)

    def _ingest_safely(self) -> None:
        """Events already in the journal are processed even when taking more in fails."""
        try:
            self.ingest()
        except Exception as exc:  # noqa: BLE001 - e.g. the journal's disk full: say so, go on
            self._troubles["ingest"].failed(exc)
        else:
            self._troubles["ingest"].passed()

    def ingest(self) -> int:
        """Move spooled events into the journal (deduplicated, capped); returns how many
        were new. Several processes may do this at once: each batch and its segment's
        offset commit together, and a batch another process took first is skipped."""
        if self.spool_dir is None:
            return 0
        new = 0
        for path in segments(self.spool_dir):
            try:
                new += self._ingest_segment(path)
            except FileNotFoundError:
                continue  # another process finished it and removed it meanwhile
        _remove_abandoned(self.spool_dir)
        return new

    def _ingest_segment(self, path: Path) -> int:
        new = 0
        final = writer_gone(path)  # asked first: a writer gone now wrote its last
        while True:
            start = self.store.spool_offset(path.name)
            if start < 0:
                break  # finished by another process, which is removing it
            seg = read_segment(path, start, final, self.batch * 20)
            if seg.end == start:
                break
            added = self.store.take_in(seg.name, start, seg.end, seg.records)
            if added is None:
                return new  # another process is taking this segment in
            new += self._count_taken(added)
            if seg.at_eof:
                break
        offset = self.store.spool_offset(path.name)
        if final and (offset < 0 or offset >= _size(path)):
            if offset >= 0:
                self.store.finish_segment(path.name)
            path.unlink(missing_ok=True)
        return new

    def _count_taken(self, added: list[Added]) -> int:
        metrics = self.responder.metrics
        for result in added:
            if result.status == "dropped" or result.dropped_key:
                report_dropped(self.store, self.responder.shared, result.dropped_key)
                metrics.inc(metrics.intake, "dropped")
        return sum(result.status == "queued" for result in added)

    def process(self, item: Claimed, closings: list[Closing]) -> None:
        """Plan and act on one claimed event; its closing goes into `closings`, which the
        caller commits together. Decisions of a table rule that asks for approval wait
        (state awaiting-approval) until a verdict makes the event due again."""
        try:
            event = parse_event(item.body)
        except EventError as exc:  # validated at intake; only a corrupted row gets here
            closings.append(Closing(item.id, "failed", f"unreadable event: {exc}", {}))
            return
        self._parsed[item.id] = event
        plan = self.responder.plan(event)
        # A first claim has nothing recorded; only a retry (or a crash's, or the pass after
        # an approval) can have.
        prior = prior_results(plan, self.store.recorded(item.id).values()) \
            if item.attempts > 1 else {}
        record = self.store.approval(item.id) if item.attempts > 1 else None
        verdict = record.get("verdict") if record else None
        gated = gated_decisions(self.responder.table, plan,
                                self.responder.executor.actions is not None)
        if verdict:
            # The table may have been reloaded while the event waited: what its rules ask
            # now waits too (a rule renamed or added never acts without its own approval).
            gated = {**gated, **{i: None for i, d in enumerate(plan.decisions)
                                 if d.table_rule in record["rules"] and not d.dry_run}}
        run = _Pass(item, plan, prior, gated, verdict, item.attempts >= self.max_attempts)
        if gated and not verdict:
            run.given = self._join_awaited(run)
            run.gated = {i: a for i, a in gated.items() if i not in run.given}
            if run.gated and (full := self._waiting_full(closings)):
                run.given.update({i: Result(Outcome.SKIPPED, full) for i in run.gated})
                run.gated = {}
        if run.gated and not verdict:
            self._run_until_approval(run, closings)
        else:
            self._run_all(run, closings, record)

    def _waiting_full(self, closings: list[Closing]) -> str | None:
        """Why no more events may wait for approval now: waiting ones leave the queue's
        count, but the cap bounds them too (a flood of alerts for distinct pods must not
        grow the journal past it, nor bury real requests in Slack)."""
        waiting = self.store.awaiting() + sum(c.approval is not None for c in closings)
        if waiting < self.store.max_pending:
            return None
        return (f"not asked: {waiting} events already await approval "
                "(RESPONDER_MAX_PENDING)")

    def _join_awaited(self, run: _Pass) -> dict[int, Result]:
        """Decisions whose table rule and target already wait for approval in another
        event: coalesced into that approval (a storm asks once, as it acts once)."""
        wanted = {index: approval_target(run.plan.decisions[index]) for index in run.gated}
        awaited = {**self.store.awaiting_targets(wanted.values()), **self._batch_targets}
        joined = {}
        for index, target in wanted.items():
            other = awaited.get(target)
            if other is not None and other != run.item.key:
                joined[index] = Result(Outcome.COALESCED, "the same table rule and target "
                                       f"already await approval (event {other})")
        return joined

    def _execute(self, run: _Pass, prior: dict[int, Result]) -> list[ActionReport] | None:
        """Run what `prior` does not hold; None when the event was put back for a retry."""
        item, plan = run.item, run.plan
        slots = decision_slots(plan)
        note = audit_note(run.verdict) if run.verdict else None

        def record(index: int, report: ActionReport) -> None:
            if report.result.retryable and not run.last_try:
                return  # a transient failure is not final unless this was the last try
            stored = {**report.to_dict(), "slot": slots[index]}
            audit = decision_fields(plan, report.decision, report.target, report.result)
            if note and index in run.gated:
                audit["approval"] = note
            if touched_cluster(report):
                # Durable at once: after a crash this action must not run again.
                self.store.record(item.id, index, stored, self.lease_seconds, audit)
            else:
                run.deferred[index], run.audits[index] = stored, audit  # recomputed if lost

        # Coalescing on every try: a window knows the event that opened it, so a retry (or a
        # restart after a crash) acts for the opener and stays coalesced for the others.
        reports = self.responder.executor.execute(
            plan, prior, record, heartbeat=lambda: self.store.renew(item.id, self.lease_seconds),
            log=False)
        for index in run.given:  # decided here, not run by the executor: recorded here
            record(index, reports[index])
        transient = [r for r in reports if r.result.retryable]
        if transient and not run.last_try:
            self._retry_later(item, transient[0].result.reason or "transient failure")
            return None
        return reports

    def _run_all(self, run: _Pass, closings: list[Closing], record: dict | None) -> None:
        """Act on every decision (an event without approval, or one with its verdict:
        approved decisions run with every check made again now; rejected or timed-out ones
        are skipped with the verdict's reason)."""
        if run.verdict:
            run.given.update(verdict_results(run, record or {}))
        reports = self._execute(run, {**run.prior, **run.given})
        if reports is None:
            return
        failed = any(r.result.outcome is Outcome.FAILED for r in reports)
        event, item = run.plan.event, run.item
        summary = summarize(event, resolve_target(event), item.received, run.plan.matched,
                            [(r.decision.action, str(r.result.outcome)) for r in reports])
        closings.append(Closing(item.id, "failed" if failed else "done", None,
                                run.deferred, run.audits, summary=summary))
        # The pass that waited for the verdict recorded the audit Events of the decisions
        # that needed none (they ran then): once more would show each action twice.
        audited = [i for i in run.prior if i not in run.gated] if run.verdict else []
        self.responder.after_actions(run.plan, reports, record, audited)
        # Which replica holds the event, so a read (or an undo) reaching another one finds it.
        if self.relay is not None:
            self._held.append((item.key, offers_undo(reports,
                                                     self.responder.registry.undoable())))

    def _publish(self, say: Callable[[Relay], None]) -> None:
        """Tell the other replicas through Redis; with Redis down, only this replica knows
        (verdicts and undos given elsewhere are refused 503 or 404 meanwhile)."""
        import redis

        assert self.relay is not None
        try:
            say(self.relay)
        except redis.RedisError as exc:
            self.relay.trouble.failed(exc)
        else:
            self.relay.trouble.passed()

    def _run_until_approval(self, run: _Pass, closings: list[Closing]) -> None:
        """Act on the decisions that need no approval; check the others against the cluster
        without acting, and leave the event awaiting approval with that plan."""
        placeholders = {i: Result(Outcome.SKIPPED, "awaiting approval") for i in run.gated}
        reports = self._execute(run, {**run.prior, **run.given, **placeholders})
        if reports is None:
            return
        checks = self.responder.executor.precheck(run.plan, list(run.gated))
        slots = decision_slots(run.plan)
        planned = [{"slot": slots[i], "table_rule": reports[i].decision.table_rule,
                    "action": reports[i].decision.action,
                    "target": reports[i].target.describe(reports[i].decision.target_keys),
                    "check": checks[i]} for i in sorted(run.gated)]
        targets = sorted({approval_target(run.plan.decisions[i]) for i in run.gated})
        record = {**new_record(run.gated, planned, self.store.clock()), "targets": targets}
        self._batch_targets.update(dict.fromkeys(targets, run.item.key))
        closings.append(Closing(run.item.id, AWAITING, None, run.deferred, run.audits,
                                approval=record))
        done = [r for i, r in enumerate(reports) if i not in run.gated]
        logger.warning("event %s: %d action(s) of table rule(s) %s await approval until %s",
                       run.plan.event.uuid, len(planned), ", ".join(record["rules"]),
                       iso(record["deadline"]))
        # Told once the closing commits: the Slack message's handle is stored with the record.
        self._after_commit.append(lambda: self.responder.request_approval(run.plan.event, done,
                                                                          record))
        if self.relay is not None:
            key = run.item.key
            keep = self.retention_seconds
            self._after_commit.append(lambda: self._publish(
                lambda relay: relay.publish_awaiting(key, record, keep)))
        if self.responder.audit is not None:
            self.responder.audit.record_all(run.plan.event, done)

    def _give_back(self, item: Claimed, reason: str) -> None:
        """After an unexpected error: retry later, or fail for good on the last attempt, so
        RESPONDER_MAX_ATTEMPTS bounds even a bug's retries."""
        if item.attempts >= self.max_attempts:
            event = self._parsed.get(item.id)
            summary = summarize(event, resolve_target(event), item.received, (), ()) \
                if event else None
            self.store.finish(item.id, "failed", reason, summary=summary)
        else:
            self._retry_later(item, reason)

    def _retry_later(self, item: Claimed, reason: str) -> None:
        delay = random.uniform(0.5, 1.0) * min(60.0, 2.0 ** (item.attempts - 1))
        logger.warning("event %s: transient failure (%s); try %d of %d again in %.1f s",
                       item.key, reason, item.attempts, self.max_attempts, delay)
        self.responder.metrics.retries.inc()
        self.store.retry_later(item.id, delay, reason)

    # --- background threads ----------------------------------------------------------
    def start(self) -> None:
        try:
            self.take_over()
        except Exception as exc:  # noqa: BLE001 - e.g. a full volume: the leases still run out
            self._troubles["loop"].failed(exc)
        for target, name in ((self._loop, "event-worker"), (self._housekeeping, "journal-sync")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.undo_server is not None:
            self.undo_server.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self.undo_server is not None:
            self.undo_server.stop(timeout)
        self._stop.set()
        self.wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def drain(self, seconds: float) -> int:
        """After `stop`, when this process ran the queue: act on what is due before going
        (the journal is often an emptyDir, gone with the pod). Returns what is left."""
        if not self._threads:
            return self.store.pending()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.run_pending(deadline):
            pass
        left = self.store.pending()
        if left:
            logger.warning("stopping with %d event(s) not finished (retries not yet due, or "
                           "no time left); they stay in %s", left, self.store.path)
        return left

    def _loop(self) -> None:
        trouble = self._troubles["loop"]
        while not self._stop.is_set():
            # Cleared before the run, not after the wait: a wake-up during the run must
            # start the next one at once, not wait for the poll.
            self.wake.clear()
            try:
                self.run_pending()
            except Exception as exc:  # noqa: BLE001 - the worker must survive; the row stays leased
                trouble.failed(exc)
            else:
                trouble.passed()
            # Woken at once by the intake (ours, or another process's through
            # responder/wakeup.py); the poll is the fallback, short as an idle poll only
            # lists a directory and reads the journal, taking no write lock. While the
            # journal fails (a full volume), once a second is often enough to see it recover.
            stuck = any(t.since is not None for t in self._troubles.values())
            self.wake.wait(1.0 if stuck else self.poll_seconds)

    def _housekeeping(self) -> None:
        pruned_at = 0.0
        while not self._stop.wait(self.sync_seconds):
            try:
                self.store.sync()
                pruned_at += self.sync_seconds
                if pruned_at % TAKE_OVER_SECONDS < self.sync_seconds:
                    # A sibling process (gunicorn's, with RESPONDER_WORKER=thread) died.
                    self.store.release_dead_claims(owner_alive)
                if pruned_at >= 60:
                    pruned_at = 0.0
                    self.store.prune(self.retention_seconds)
            except Exception as exc:  # noqa: BLE001 - e.g. a full volume: retried
                self._troubles["sync"].failed(exc)
            else:
                self._troubles["sync"].passed()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0  # another process finished and removed it


def _remove_abandoned(directory: Path, age: float = 60.0) -> None:
    """Segments a writer created but died before naming (empty, never written to)."""
    now = time.time()
    for path in directory.glob("*.new"):
        try:
            if now - path.stat().st_mtime > age and writer_gone(path):
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            continue
