"""The responder itself: a loaded table, the actions and a cluster, answering events."""

from __future__ import annotations

import logging
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api

from .actions import Registry
from .decisions import Plan, plan_response
from .events import Event
from .executor import ActionReport, Executor
from .metrics import Metrics
from .settings import Settings
from .table import Table

logger = logging.getLogger(__name__)


class Responder:
    """Plans and runs the response to each event. Dependencies are passed in, never global."""

    def __init__(self, settings: Settings, table: Table, registry: Registry,
                 api_client: ApiClient | None, metrics: Metrics | None = None):
        self.settings = settings
        self.registry = registry
        self.api_client = api_client
        self.metrics = metrics or Metrics()
        self.table = table
        actions = (registry.instantiate(CoreV1Api(api_client), settings.kube_timeout)
                   if api_client is not None else None)
        self.executor = Executor(actions, idle_reason="no Kubernetes cluster configured",
                                 metrics=self.metrics)

    @property
    def table(self) -> Table:
        return self._table

    @table.setter
    def table(self, table: Table) -> None:
        # One attribute assignment: a request sees the old table or the new, never a mix.
        self._table = table
        self.metrics.table_rules.set(len(table.rules))

    def plan(self, event: Event) -> Plan:
        return plan_response(self.table, self.registry, event,
                             own_namespace=self.settings.namespace,
                             force_dry_run=self.settings.force_dry_run)

    def respond(self, event: Event) -> dict[str, Any]:
        """Plan, act, and return the reply body for the event."""
        self.metrics.events.labels(event.rule, event.priority.label, event.source).inc()
        log_received(event)
        plan = self.plan(event)
        reports = self.executor.execute(plan)
        logger.debug("event %s (%s) matched %s", event.uuid, event.rule, list(plan.matched))
        return reply_body(plan, reports)

    @property
    def armed(self) -> bool:
        """True when at least one table rule would really act on a cluster."""
        if self.api_client is None or self.settings.force_dry_run:
            return False
        return any(not self.table.is_dry_run(rule) for rule in self.table.rules)


def log_received(event: Event) -> None:
    """The audit record of an accepted event; decisions carry the same uuid."""
    record = {"uuid": event.uuid, "rule": event.rule, "priority": event.priority.label,
              "source": event.source, "time": event.time, "hostname": event.hostname,
              "tags": list(event.tags), "output_fields": dict(event.output_fields)}
    logger.info("event uuid=%s rule=%r priority=%s source=%s", event.uuid, event.rule,
                event.priority.label, event.source, extra={"event": record})


def reply_body(plan: Plan, reports: list[ActionReport]) -> dict[str, Any]:
    """The JSON answer to an accepted event."""
    event = plan.event
    return {
        "uuid": event.uuid,
        "rule": event.rule,
        "priority": event.priority.label,
        "matched": list(plan.matched),
        "decisions": [
            {"table_rule": r.decision.table_rule, "dry_run": r.decision.dry_run, **r.to_dict()}
            for r in reports
        ],
    }


def replay_line(plan: Plan, reports: list[ActionReport]) -> dict[str, Any]:
    """One line of `responder replay` output (a documented, parsed format: keep it exact)."""
    event = plan.event
    return {
        "uuid": event.uuid,
        "rule": event.rule,
        "priority": event.priority.label,
        "matched": list(plan.matched),
        "actions": [r.to_dict() for r in reports],
    }
