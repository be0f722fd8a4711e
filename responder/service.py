"""The responder itself: a loaded table, the actions and a cluster, answering events."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api

from .actions import Outcome, Registry, Result, Services
from .approvals import audit_note, gated_decisions
from .audit import EventRecorder
from .auditqueue import AuditQueue
from .decisions import Plan, plan_response
from .events import Event
from .evidencestore import EvidenceStore
from .executor import ActionReport, Executor
from .guardrails import Guardrails
from .journal import EventStore
from .kube import ThrottledApiClient
from .logs import clipped
from .metrics import Metrics
from .notify import SlackNotifier, notify_choices
from .settings import Settings
from .shared import SharedState
from .table import Table

logger = logging.getLogger(__name__)
INLINE_CANNOT_WAIT = ("approval required, but RESPONDER_INTAKE=inline cannot wait for one "
                      "(use the queue intake)")
MAX_LABEL_LENGTH = 128  # Falco's rule names run to about 60 characters, its sources to 15


class Responder:
    """Plans and runs the response to each event. Dependencies are passed in, never global."""

    def __init__(self, settings: Settings, table: Table, registry: Registry,
                 api_client: ApiClient | None, *, shared: SharedState,
                 metrics: Metrics | None = None, store: EventStore | None = None,
                 notifier: SlackNotifier | None = None, evidence: EvidenceStore | None = None):
        self.settings = settings
        #: Where evidence bundles are kept, and `GET /events/<uuid>/evidence` reads them.
        self.evidence = evidence
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.table = table
        self.store = store
        self.shared = shared
        self.notifier = notifier
        self.api_client = api_client
        self.recorder: EventRecorder | None = None
        #: Where after_actions sends audit Events: the recorder itself (inline intake: the
        #: reply waits for them), or a queue with its own thread (the queued worker).
        self.audit: EventRecorder | AuditQueue | None = None
        self.executor = self._build_executor(api_client)

    def _build_executor(self, api_client: ApiClient | None) -> Executor:
        if api_client is None:
            return Executor(None, idle_reason="no Kubernetes cluster configured",
                            metrics=self.metrics)
        timeout = self.settings.kubernetes.timeout
        def count(outcome: str) -> None:
            self.metrics.inc(self.metrics.audit_events, outcome)

        self.recorder = EventRecorder(CoreV1Api(self._audit_client(api_client)), timeout,
                                      count=count)
        self.audit = AuditQueue(self.recorder, count=count) \
            if self.settings.intake.mode == "queue" else self.recorder
        throttled = ThrottledApiClient.wrap(api_client, self._throttle)
        kubernetes = self.settings.kubernetes
        guardrails = Guardrails(
            self.shared, own_pod=(kubernetes.namespace, kubernetes.pod_name),
            alert=self.alert, on_trip=lambda name: self.metrics.inc(self.metrics.limit_trips, name))
        actions = self.registry.instantiate(throttled, timeout, Services(evidence=self.evidence))
        return Executor(actions, metrics=self.metrics,
                        guardrails=guardrails, shared=self.shared)

    @property
    def table(self) -> Table:
        return self._table

    @table.setter
    def table(self, table: Table) -> None:
        # One attribute assignment: a request sees the old table or the new, never a mix;
        # its limits travel with each plan made from it.
        self._table = table
        #: When this table began to serve (the console shows it).
        self.table_loaded_at = time.time()
        self.metrics.table_rules.set(len(table.rules))

    def plan(self, event: Event) -> Plan:
        return plan_response(self.table, self.registry, event,
                             own_namespace=self.settings.kubernetes.namespace,
                             force_dry_run=self.settings.table.force_dry_run)

    def respond(self, event: Event) -> dict[str, Any]:
        """Inline intake: plan, act, and return the reply body for the event."""
        self.count_received(event)
        log_received(event)
        plan = self.plan(event)
        # Inline intake cannot wait for a person (the reply is the response): never act
        # without the approval the table asks for. Refused at start; this covers a reload.
        gated = gated_decisions(self.table, plan, self.executor.actions is not None)
        held = {i: Result(Outcome.SKIPPED, INLINE_CANNOT_WAIT) for i in gated}
        reports = self.executor.execute(plan, held)
        self.after_actions(plan, reports)
        return reply_body(plan, reports)

    def count_received(self, event: Event) -> None:
        # The number of series is bounded by Metrics.count_event (MAX_EVENT_SERIES).
        self.metrics.count_event(clip_label(event.rule), event.priority.label, event.source)

    def after_actions(self, plan: Plan, reports: list[ActionReport],
                      approval: dict[str, Any] | None = None,
                      audited: Collection[int] = ()) -> None:
        """Tell people (Slack) and the cluster (Events) what was done. Never raises.
        After an approval (`approval`: the journal's record, with its verdict), the
        approval's message is updated in place and the audit Events name the approver.
        `audited`: indices of reports whose audit Events an earlier pass recorded."""
        notes: dict[str, str] = {}
        if approval is not None and approval.get("verdict"):
            note = audit_note(approval["verdict"])
            notes = {rule: note for rule in approval.get("rules", [])}
        if self.notifier is not None:
            if approval is not None:
                self.notifier.update_approval(plan.event, approval, reports,
                                              self.approval_message(plan.event.uuid))
            else:
                self.notifier.maybe_notify(plan.event, reports, plan.matched,
                                           notify_choices(self.table, plan.matched))
        if self.audit is not None:
            self.audit.record_all(plan.event, [r for i, r in enumerate(reports)
                                               if i not in audited], notes)

    def request_approval(self, event: Event, reports: list[ActionReport],
                         record: dict[str, Any]) -> None:
        """Ask in Slack (when on) for the approval an event waits for; the message's handle
        goes into the journal, so later updates edit it, from any process."""
        if self.notifier is None:
            return
        uuid = event.uuid

        def keep(handle: Any) -> None:
            if self.store is not None:
                self.store.update_approval(uuid, {"slack": {"channel": handle[0],
                                                            "ts": handle[1]}})
        self.notifier.request_approval(event, reports, record, on_sent=keep)

    def approval_message(self, uuid: str) -> Callable[[], tuple[str, str] | None]:
        """Where an approval's Slack message is, read when the update is sent (the post
        may still be on its way when someone decides)."""
        def find() -> tuple[str, str] | None:
            known = self.store.approval_state(uuid) if self.store is not None else None
            slack = known[1].get("slack") if known and known[1] else None
            return (slack["channel"], slack["ts"]) if slack else None
        return find

    def count_verdict(self, verdict: dict[str, Any]) -> None:
        self.metrics.inc(self.metrics.approvals, verdict["decision"], verdict["via"])

    def alert(self, text: str) -> None:
        logger.warning("alert: %s", text)
        if self.notifier is not None:
            self.notifier.send_alert(text)

    def _audit_client(self, api_client: ApiClient) -> ApiClient:
        """Audit Events get a client (its own connections) and a budget of their own: a
        containment call never waits behind one, for a connection or for a token."""
        return ThrottledApiClient.wrap(api_client, self._audit_throttle)

    def _throttle(self) -> None:
        self._take("kube-api", self.settings.kubernetes.qps, self.settings.kubernetes.burst)

    def _audit_throttle(self) -> None:
        kubernetes = self.settings.kubernetes
        self._take("kube-audit", kubernetes.audit_qps, kubernetes.audit_burst)

    def _take(self, bucket: str, qps: float, burst: int) -> None:
        while (wait := self.shared.take_token(bucket, qps, burst)) > 0:
            time.sleep(wait)

    def close(self, timeout: float) -> None:
        """Record the audit Events still queued (up to `timeout` seconds)."""
        if isinstance(self.audit, AuditQueue):
            self.audit.close(timeout)

    @property
    def armed(self) -> bool:
        """True when at least one table rule would really act on a cluster."""
        if self.api_client is None or self.settings.table.force_dry_run:
            return False
        return any(not self.table.is_dry_run(rule) for rule in self.table.rules)


def clip_label(value: str) -> str:
    """`value` when short enough for a label; a longer one is cut and marked with a digest
    of the whole, so two long names that share a beginning stay apart."""
    if len(value) <= MAX_LABEL_LENGTH:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{value[:MAX_LABEL_LENGTH - 16]}...{digest}"


def log_received(event: Event) -> None:
    """The audit record of an accepted event; decisions carry the same uuid."""
    record = {"uuid": event.uuid, "rule": event.rule, "priority": event.priority.label,
              "source": event.source, "time": event.time, "hostname": event.hostname,
              "tags": list(event.tags), "output_fields": dict(event.output_fields)}
    logger.info("event uuid=%s rule=%r priority=%s source=%s", event.uuid, clipped(event.rule),
                event.priority.label, clipped(event.source), extra={"event": record})


def event_summary(plan: Plan) -> dict[str, Any]:
    """What every answer about an event starts with."""
    event = plan.event
    return {"uuid": event.uuid, "rule": event.rule, "priority": event.priority.label,
            "matched": list(plan.matched)}


def reply_body(plan: Plan, reports: list[ActionReport]) -> dict[str, Any]:
    """The JSON answer to an event acted on inline."""
    return {**event_summary(plan), "decisions": [decision_dict(r) for r in reports]}


def queued_body(event: Event, status: str) -> dict[str, Any]:
    """The JSON answer to a queued event. Planning waits for the worker: the request path
    stays as short as Falcosidekick's one-at-a-time sending needs; the decisions are at
    `status_url` once made."""
    return {"uuid": event.uuid, "rule": event.rule, "priority": event.priority.label,
            "status": status, "status_url": f"/events/{event.uuid}"}


def decision_dict(report: ActionReport) -> dict[str, Any]:
    return {"table_rule": report.decision.table_rule, "dry_run": report.decision.dry_run,
            **report.to_dict()}


def replay_line(plan: Plan, reports: list[ActionReport]) -> dict[str, Any]:
    """One line of `responder replay` output (a documented, parsed format: keep it exact).
    Each action carries its params: a table change of params alone is a decision change."""
    return {**event_summary(plan),
            "actions": [{**r.to_dict(), "params": dict(r.decision.params)} for r in reports]}
