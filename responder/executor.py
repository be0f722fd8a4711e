"""Carries out a plan against the Kubernetes API and reports one outcome per decision."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from .actions import Action, Outcome, Result, Target, api_failure
from .decisions import Decision, Plan
from .metrics import Metrics

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
            "target": self.target.describe(("namespace", "pod", "node")
                                           if "node" in self.decision.needs
                                           else ("namespace", "pod")),
            "outcome": str(self.result.outcome),
        }
        if self.result.reason:
            out["reason"] = self.result.reason
        return out


class Executor:
    """Runs decisions. With no actions (no cluster, or a replay) everything 'would run'."""

    def __init__(self, actions: Mapping[str, Action] | None, idle_reason: str | None = None,
                 metrics: Metrics | None = None):
        self.actions = actions
        self.idle_reason = idle_reason
        self.metrics = metrics

    def execute(self, plan: Plan) -> list[ActionReport]:
        """Outcomes in plan order; never raises for a failed Kubernetes call."""
        node = self._node_for(plan)
        gone: set[tuple[str | None, str | None]] = set()
        reports = []
        for decision in plan.decisions:
            target = dataclasses.replace(decision.target, node=node) if node else decision.target
            result = self._run_one(decision, target, gone)
            reports.append(ActionReport(decision, target, result))
            log_decision(plan, decision, target, result)
            if self.metrics:
                self.metrics.outcomes.labels(decision.action, str(result.outcome)).inc()
        return reports

    def _run_one(self, decision: Decision, target: Target, gone: set) -> Result:
        if decision.skip_reason:
            return Result(Outcome.SKIPPED, decision.skip_reason)
        if self.actions is None:
            return Result(Outcome.WOULD_RUN, self.idle_reason)
        if decision.dry_run:
            return Result(Outcome.WOULD_RUN, "dry-run")
        if "node" in decision.needs and not target.node:
            return Result(Outcome.SKIPPED, "pod's node unknown and the event has no hostname")
        action = self.actions[decision.action]
        if "pod" in action.needs and (target.namespace, target.pod) in gone:
            return Result(Outcome.SKIPPED, "pod was deleted by an earlier action")
        started = time.monotonic()
        try:
            result = action.run(target, decision.params)
        except Exception as exc:  # noqa: BLE001 - one failed call must not stop the others
            return Result(Outcome.FAILED, api_failure(exc))
        finally:
            if self.metrics:
                self.metrics.action_seconds.labels(decision.action).observe(
                    time.monotonic() - started)
        if not action.object_survives and result.outcome in (Outcome.DONE, Outcome.ALREADY_DONE):
            gone.add((target.namespace, target.pod))
        return result

    def _node_for(self, plan: Plan) -> str | None:
        """The node of the event's pod, read once per event before any action changes it."""
        wanted = [d for d in plan.decisions
                  if "node" in d.needs and not d.skip_reason and not d.dry_run]
        if not wanted or self.actions is None:
            return None
        target = wanted[0].target
        if not (target.pod and target.namespace):
            return None
        core = next(iter(self.actions.values())).core
        try:
            pod = core.read_namespaced_pod(target.pod, target.namespace,
                                           _request_timeout=self._timeout())
        except ApiException as exc:
            logger.info("pod %s/%s not readable (%s); node falls back to the event hostname",
                        target.namespace, target.pod, api_failure(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - the cordon itself will report the failure
            logger.warning("cannot look up pod %s/%s: %s", target.namespace, target.pod,
                           api_failure(exc))
            return None
        return pod.spec.node_name if pod.spec else None

    def _timeout(self) -> float:
        return next(iter(self.actions.values())).timeout


def log_decision(plan: Plan, decision: Decision, target: Target, result: Result) -> None:
    """One structured line per decision; the JSON log format turns `extra` into keys."""
    fields = {
        "uuid": plan.event.uuid, "rule": plan.event.rule, "table_rule": decision.table_rule,
        "action": decision.action, "target": target.describe(("namespace", "pod", "node")),
        "outcome": str(result.outcome), "dry_run": decision.dry_run, "reason": result.reason,
    }
    logger.info("decision rule=%r table_rule=%s action=%s target=%s outcome=%s dry_run=%s "
                "uuid=%s reason=%s", fields["rule"], fields["table_rule"], fields["action"],
                fields["target"], fields["outcome"], fields["dry_run"], fields["uuid"],
                fields["reason"], extra={"decision": fields})
