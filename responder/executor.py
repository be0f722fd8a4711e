"""Carries out a plan against the Kubernetes API and reports one outcome per decision."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .actions import Action, Incident, Outcome, Result, Target, api_failure
from .decisions import Decision, Plan
from .guardrails import (
    Guardrails,
    PodFacts,
    Verdict,
    Verification,
    read_pod,
    unverified_reason,
    verify_container,
)
from .logs import clipped
from .metrics import Metrics
from .retry import RetryPolicy, is_retryable
from .shared import SharedState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionReport:
    """A decision and what came of it."""

    decision: Decision
    target: Target
    result: Result

    def to_dict(self) -> dict[str, Any]:
        """The replay/HTTP shape: action, target (only what applies), outcome, reason."""
        out: dict[str, Any] = {
            "action": self.decision.action,
            "target": self.target.describe(self.decision.target_keys),
            "outcome": str(self.result.outcome),
        }
        if self.result.reason:
            out["reason"] = self.result.reason
        if self.result.details:
            out["details"] = dict(self.result.details)
        return out


@dataclass
class _Run:
    """What one execution of a plan has learned so far."""

    plan: Plan
    pod: PodFacts | None = None
    pod_error: BaseException | None = None
    #: Whether the pod read is the event's own, judged by the event's container.id.
    verification: Verification = Verification(Verdict.NO_POD)
    coalesced: dict[str, int] = dataclasses.field(default_factory=dict)
    #: The reports so far, in plan order (an action given the incident sees them).
    reports: list[ActionReport] = dataclasses.field(default_factory=list)
    #: Windows this event opened, by table rule: closed again if the rule did nothing.
    opened: dict[str, str] = dataclasses.field(default_factory=dict)
    gone: set = dataclasses.field(default_factory=set)
    #: Table rules stopped by a failed `on_failure: stop` action: its report, by rule.
    stopped: dict[str, ActionReport] = dataclasses.field(default_factory=dict)


class Executor:
    """Runs decisions. With no actions (no cluster, or a replay) everything 'would run'.
    Live actions always run behind guardrails; the limits are the plan's own."""

    def __init__(self, actions: Mapping[str, Action] | None, idle_reason: str | None = None,
                 metrics: Metrics | None = None, guardrails: Guardrails | None = None,
                 shared: SharedState | None = None, retry: RetryPolicy | None = None):
        if actions is not None and guardrails is None:
            # Without them, nothing checks the event's container, the own pod or any limit.
            raise ValueError("an executor with live actions needs guardrails")
        self.actions = actions
        self.idle_reason = idle_reason
        self.metrics = metrics
        self.guardrails = guardrails
        self.shared = shared
        self.retry = retry or RetryPolicy()

    def execute(self, plan: Plan, prior: Mapping[int, Result] | None = None,
                record: Callable[[int, ActionReport], None] | None = None,
                coalesce: bool = True,
                heartbeat: Callable[[], None] | None = None,
                log: bool = True) -> list[ActionReport]:
        """Outcomes in plan order; never raises for a failed Kubernetes call.

        `prior` holds outcomes recorded by an earlier, interrupted attempt: those actions are
        not run again. `record` is told each new outcome as soon as it is known;
        `heartbeat` is called before each live action (the worker renews its lease).
        `log=False` leaves the decision records to the caller (the worker logs them once
        they are in the journal)."""
        prior = prior or {}
        run = _Run(plan)
        # Coalesce first: a storm's coalesced events must not spend API requests (and the
        # shared rate limit) reading a pod they will not act on.
        if coalesce:
            self._coalesce(run, prior)
        self._inspect_pod(run, prior)
        # The field as the event has it (a number stays a number): only strings are ids.
        run.verification = verify_container(run.pod, run.plan.event.field("container.id"))
        reports = run.reports
        for index, decision in enumerate(plan.decisions):
            if index in prior:
                reports.append(ActionReport(decision, self._target(run, decision), prior[index]))
                _note_stop(run, reports[-1])
                continue
            if heartbeat and not decision.dry_run and not decision.skip_reason:
                heartbeat()
            report = self._decide(run, decision)
            reports.append(report)
            _note_stop(run, report)
            if log:
                log_decision(plan, decision, report.target, report.result)
            if self.metrics:
                self.metrics.inc(self.metrics.outcomes, decision.action,
                                 str(report.result.outcome))
            if record:
                record(index, report)
        self._close_idle_windows(run, reports)
        return reports

    def precheck(self, plan: Plan, indices: Collection[int]) -> dict[int, str | None]:
        """For the decisions at `indices`: why each would be skipped if it ran now (None: it
        would run), checked against the live cluster as a run checks it, acting on nothing."""
        run = _Run(plan)
        others = {i: Result(Outcome.SKIPPED) for i in range(len(plan.decisions))
                  if i not in indices}
        self._inspect_pod(run, others)
        run.verification = verify_container(run.pod, plan.event.field("container.id"))
        return {i: self._preview(run, plan.decisions[i]) for i in indices}

    def _preview(self, run: _Run, decision: Decision) -> str | None:
        if decision.skip_reason or self.actions is None or decision.dry_run:
            return decision.skip_reason
        if run.pod_error is not None:
            return f"cannot read the pod: {api_failure(run.pod_error)}"
        target = self._target(run, decision)
        if "node" in decision.needs and not target.node:
            return "pod's node unknown and the event has no hostname"
        try:
            return self.guardrails.preview(self.actions[decision.action], decision, target,
                                           run.pod, run.verification, run.plan.limits)
        except Exception as exc:  # noqa: BLE001 - e.g. listing nodes failed: said, not fatal
            return f"guardrail check failed: {api_failure(exc)}"

    def _decide(self, run: _Run, decision: Decision) -> ActionReport:
        target = self._target(run, decision)
        return ActionReport(decision, target, self._run_one(run, decision, target))

    def _target(self, run: _Run, decision: Decision) -> Target:
        pod, target = run.pod, decision.target
        if pod and pod.exists and run.verification.pod_is_the_events:
            # Only a pod not contradicted by the event names the node and the uid to act on.
            return dataclasses.replace(target, node=pod.node or target.node, pod_uid=pod.uid)
        return target

    def _run_one(self, run: _Run, decision: Decision, target: Target) -> Result:
        if decision.skip_reason:
            return Result(Outcome.SKIPPED, decision.skip_reason)
        if decision.table_rule in run.coalesced:
            return Result(Outcome.COALESCED, f"same table rule and target already handled "
                          f"{run.coalesced[decision.table_rule] - 1} time(s) within the last "
                          f"{run.plan.limits.coalesce_seconds:g} s")
        if decision.table_rule in run.stopped:
            return _stopped_result(run.stopped[decision.table_rule])
        if self.actions is None:
            return Result(Outcome.WOULD_RUN, self.idle_reason)
        if decision.dry_run:
            return Result(Outcome.WOULD_RUN, "dry-run")
        return self._run_live(run, decision, target)

    def _run_live(self, run: _Run, decision: Decision, target: Target) -> Result:
        if run.pod_error is not None:
            return Result(Outcome.FAILED, f"cannot read the pod: {api_failure(run.pod_error)}",
                          retryable=is_retryable(run.pod_error))
        if "node" in decision.needs and not target.node:
            return Result(Outcome.SKIPPED, "pod's node unknown and the event has no hostname")
        action = self.actions[decision.action]
        if "pod" in action.needs and (target.namespace, target.pod) in run.gone:
            return Result(Outcome.SKIPPED, "pod was deleted by an earlier action")
        with action.exclusive():
            try:
                clearance = self.guardrails.check(action, decision, target, run.pod,
                                                  run.verification, run.plan.limits)
            except Exception as exc:  # noqa: BLE001 - e.g. listing nodes failed
                return Result(Outcome.FAILED, f"guardrail check failed: {api_failure(exc)}",
                              retryable=is_retryable(exc))
            if clearance.reason:
                return Result(Outcome.SKIPPED, clearance.reason)
            result = clearance.answer or self._call(action, decision, target,
                                                    _incident(run, decision, self.actions))
            clearance.settle(result)
        if not action.object_survives and result.outcome in (Outcome.DONE, Outcome.ALREADY_DONE):
            run.gone.add((target.namespace, target.pod))
        return result

    def _call(self, action: Action, decision: Decision, target: Target,
              incident: Incident) -> Result:
        started = time.monotonic()
        try:
            return self.retry.call(action.attempts(target, decision.params, incident))
        except Exception as exc:  # noqa: BLE001 - one failed call must not stop the others
            return Result(Outcome.FAILED, api_failure(exc), retryable=is_retryable(exc))
        finally:
            if self.metrics:
                self.metrics.action_seconds.labels(decision.action).observe(
                    time.monotonic() - started)

    def _inspect_pod(self, run: _Run, prior: Mapping[int, Result]) -> None:
        """Read the event's pod once, before any action changes it: its node for node actions,
        its containers and owners for the guardrails."""
        live = [d for i, d in enumerate(run.plan.decisions) if i not in prior
                and not d.skip_reason and not d.dry_run and d.table_rule not in run.coalesced
                and ("pod" in d.needs or "node" in d.needs)]
        if not live or self.actions is None:
            return
        target = live[0].target
        if not (target.pod and target.namespace):
            return
        action = next(iter(self.actions.values()))
        try:
            run.pod = self.retry.call(lambda: read_pod(action.core, target, action.timeout))
        except Exception as exc:  # noqa: BLE001 - recorded per action, retried later
            logger.warning("cannot read pod %s/%s: %s", target.namespace, target.pod,
                           api_failure(exc))
            run.pod_error = exc

    def _coalesce(self, run: _Run, prior: Mapping[int, Result]) -> None:
        """Events for the same (table rule, namespace, pod) inside the window act once.
        The event that opened a window is its member, so a retry of it still acts."""
        if self.shared is None:
            return
        seconds = run.plan.limits.coalesce_seconds
        for index, decision in enumerate(run.plan.decisions):
            rule = decision.table_rule
            # Dry-run and idle decisions open no window: they must not hide a real response.
            if (decision.skip_reason or decision.dry_run or self.actions is None
                    or rule in run.coalesced or seconds <= 0 or index in prior):
                continue
            t = decision.target
            key = f"{rule}|{t.namespace}|{t.pod or t.node}"
            try:
                count = self.shared.open_window(key, seconds, run.plan.event.uuid)
            except Exception as exc:  # noqa: BLE001 - e.g. Redis down: act rather than drop
                logger.warning("coalescing unavailable (%s); acting on event %s",
                               type(exc).__name__, run.plan.event.uuid)
                count = 1
            run.coalesced[rule] = count
            if count == 1:
                run.opened[rule] = key
        # Only rules whose window was already open are coalesced; count 1 means "run".
        run.coalesced = {rule: n for rule, n in run.coalesced.items() if n > 1}

    def _close_idle_windows(self, run: _Run, reports: list[ActionReport]) -> None:
        """A window whose opener did nothing (every action skipped or finally failed, e.g. a
        stale or forged event whose container is not in the pod), or could not be verified
        for a destructive action, must not swallow the genuine events after it."""
        for rule, key in run.opened.items():
            mine = [r for r in reports if r.decision.table_rule == rule]
            results = [r.result for r in mine]
            if _held_back(run, [r.decision for r in mine]) or all(
                    r.outcome is Outcome.SKIPPED or (r.outcome is Outcome.FAILED
                                                     and not r.retryable) for r in results):
                try:
                    self.shared.close_window(key, run.plan.event.uuid)
                except Exception as exc:  # noqa: BLE001 - the window then just runs out
                    logger.warning("cannot close coalescing window %s: %s", key,
                                   type(exc).__name__)


def _note_stop(run: _Run, report: ActionReport) -> None:
    if report.decision.stop_on_failure and report.result.outcome is Outcome.FAILED:
        run.stopped.setdefault(report.decision.table_rule, report)


def _stopped_result(failed: ActionReport) -> Result:
    """A later action of a rule whose `on_failure: stop` action failed. Transient like that
    failure: the worker then tries the event again, the failed action first."""
    return Result(Outcome.SKIPPED, f"{failed.decision.action} failed earlier in table rule "
                  f"{failed.decision.table_rule} (on_failure: stop)",
                  retryable=failed.result.retryable)


def _incident(run: _Run, decision: Decision, actions: Mapping[str, Action]) -> Incident:
    event = run.plan.event
    return Incident(uuid=event.uuid, event=event.raw, table_rule=decision.table_rule,
                    earlier=tuple(r.to_dict() for r in run.reports),
                    pod=_pod_as_read(run, actions))


def _pod_as_read(run: _Run, actions: Mapping[str, Action]) -> Any:
    """The pod as read before the plan, while nothing may have changed it since: every
    earlier action was read-only or only said what it would do. Any other outcome (done,
    failed, skipped after a first write, coalesced or already done by another event) may
    mean a changed pod: a capture after a label must see the label."""
    if run.pod is None:
        return None
    for report in run.reports:
        action = actions.get(report.decision.action)
        if report.result.outcome is not Outcome.WOULD_RUN and not (
                action is not None and action.read_only):
            return None
    return run.pod.obj


def _held_back(run: _Run, decisions: list[Decision]) -> bool:
    """Whether an unverified event was kept from a destructive action of this rule: it must
    not coalesce away the verified event for the same target that comes after it."""
    return any(unverified_reason(d, run.verification) for d in decisions)


def log_decision(plan: Plan, decision: Decision, target: Target, result: Result) -> None:
    """One structured line per decision; the JSON log format turns `extra` into keys."""
    log_decision_fields(decision_fields(plan, decision, target, result))


def decision_fields(plan: Plan, decision: Decision, target: Target,
                    result: Result) -> dict[str, Any]:
    """What a decision's log record says (kept in the journal until it is logged). Pure."""
    # The event's own record has its rule and fields whole; each decision line quotes them
    # cut short, so a hostile value is not written once more per action.
    where = target.describe(("namespace", "pod", "node"))
    return {
        "uuid": plan.event.uuid, "rule": clipped(plan.event.rule),
        "table_rule": decision.table_rule, "action": decision.action,
        "target": {k: clipped(v) for k, v in where.items()},
        "outcome": str(result.outcome), "dry_run": decision.dry_run,
        "reason": clipped(result.reason),
    }


def log_decision_fields(fields: dict[str, Any]) -> None:
    """The `decision` audit record, from `decision_fields`."""
    # An approval (who approved, rejected, or the timeout) is said only where there was one.
    approval = f" approval={fields['approval']!r}" if fields.get("approval") else ""
    logger.info("decision rule=%r table_rule=%s action=%s target=%s outcome=%s dry_run=%s "
                "uuid=%s reason=%s%s", fields["rule"], fields["table_rule"], fields["action"],
                fields["target"], fields["outcome"], fields["dry_run"], fields["uuid"],
                fields["reason"], approval, extra={"decision": fields})
