"""The audit trail in the cluster: a Kubernetes Event on every object the responder acted on."""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from kubernetes.client import (
    CoreV1Api,
    CoreV1Event,
    V1EventSource,
    V1ObjectMeta,
    V1ObjectReference,
)

from .actions import ObjectRef, Outcome, api_failure
from .events import Event
from .executor import ActionReport

logger = logging.getLogger(__name__)

COMPONENT = "falco-responder"
REASON = "FalcoResponse"
#: Where Events about cluster-scoped objects (nodes) go, as kubectl and the kubelet do.
CLUSTER_SCOPED_NAMESPACE = "default"
MESSAGE_LIMIT = 1024  # the events.k8s.io note limit; core/v1 tools show less anyway
NAME_LIMIT = 253
RECORDED = (Outcome.DONE, Outcome.ALREADY_DONE)
#: responder_audit_events_total{outcome}: created, refused by the API (or unreachable), or
#: never tried (the queue was full, or still held them when the process stopped).
RECORDED_OUTCOME, FAILED, DROPPED = "recorded", "failed", "dropped"


class EventRecorder:
    """Creates one core/v1 Event per action that changed (or found changed) an object.

    Needs only `create` on `events` in the namespaces of the pods acted on (and in
    "default", for nodes). Recording never raises: a failure is logged and `record`
    returns False, so the audit trail can never block or undo a response.
    """

    def __init__(self, core: CoreV1Api, timeout: float, *, instance: str | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 count: Callable[[str], None] = lambda outcome: None):
        self.core = core
        #: Called with "recorded" or "failed" for each Event tried (the metric).
        self.count = count
        self.timeout = timeout
        self.instance = (instance or socket.gethostname())[:128]
        self._now = now

    def record(self, event: Event, report: ActionReport, note: str | None = None) -> bool:
        """Create the Event for one action report (`note`: e.g. who approved it); True when
        the API accepted it."""
        if report.decision.dry_run or report.result.outcome not in RECORDED:
            return False
        ref = involved_object(report)
        if ref is None:
            logger.warning("no audit Event for %s (uuid=%s): the report names no object",
                           report.decision.action, event.uuid)
            self.count(FAILED)
            return False
        body = build_audit_event(event, report, ref, self.instance, self._now(), note)
        namespace = body.metadata.namespace
        try:
            self.core.create_namespaced_event(namespace, body, _request_timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - the audit trail must never stop a response
            logger.warning("cannot record audit Event for %s on %s %s (uuid=%s): %s",
                           report.decision.action, ref.kind, ref.name, event.uuid,
                           api_failure(exc))
            self.count(FAILED)
            return False
        self.count(RECORDED_OUTCOME)
        return True

    def create(self, body: CoreV1Event, what: str) -> bool:
        """Create an Event built elsewhere (an undo's); True when the API accepted it.
        Never raises: `what` names it in the warning of a refusal."""
        try:
            self.core.create_namespaced_event(body.metadata.namespace, body,
                                              _request_timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - the audit trail must never stop a response
            logger.warning("cannot record audit Event for %s: %s", what, api_failure(exc))
            self.count(FAILED)
            return False
        self.count(RECORDED_OUTCOME)
        return True

    def now(self) -> datetime:
        return self._now()

    def record_all(self, event: Event, reports: list[ActionReport],
                   notes: Mapping[str, str] | None = None) -> int:
        """`record` each report (with the note of its table rule, if any); how many Events
        were created."""
        notes = notes or {}
        return sum(self.record(event, report, notes.get(report.decision.table_rule))
                   for report in reports)


def involved_object(report: ActionReport) -> ObjectRef | None:
    """The object to attach the Event to: what the action reported, else its target.

    A pod deleted before we got to it ("already gone") comes back without the API's
    object, so its uid is unknown; the Event still names it by namespace and name.
    """
    if report.result.involved is not None:
        return report.result.involved
    kind = report.decision.acts_on
    return kind.ref(report.target) if kind is not None else None


def build_audit_event(event: Event, report: ActionReport, ref: ObjectRef, instance: str,
                      now: datetime, note: str | None = None) -> CoreV1Event:
    """The core/v1 Event body recording one action. Pure."""
    return core_event(ref, REASON, report.decision.action, audit_message(event, report, note),
                      instance, now)


def core_event(ref: ObjectRef, reason: str, action: str, message: str, instance: str,
               now: datetime, kind: str = "Warning") -> CoreV1Event:
    """A core/v1 Event about `ref` from the responder. Pure."""
    namespace = ref.namespace or CLUSTER_SCOPED_NAMESPACE
    seconds = now.replace(microsecond=0)
    return CoreV1Event(
        metadata=V1ObjectMeta(name=event_name(ref.name), namespace=namespace),
        involved_object=V1ObjectReference(
            kind=ref.kind, name=ref.name, namespace=ref.namespace, uid=ref.uid,
            api_version=ref.api_version),
        reason=reason,
        type=kind,
        action=action,
        message=clip_message(message),
        source=V1EventSource(component=COMPONENT),
        reporting_component=COMPONENT,
        reporting_instance=instance,
        first_timestamp=seconds,
        last_timestamp=seconds,
        event_time=now,
        count=1,
    )


def audit_message(event: Event, report: ActionReport, note: str | None = None) -> str:
    """What happened, in one line: Falco rule, table rule, action, outcome, the digest the
    action recorded (if any), event uuid (and `note`, e.g. who approved it)."""
    result = report.result
    if result.outcome == Outcome.ALREADY_DONE:
        outcome = result.reason or "already done"  # e.g. "already gone", "already cordoned"
    else:
        outcome = f"{result.outcome} ({result.reason})" if result.reason else str(result.outcome)
    # A digest the action kept (an evidence bundle's) goes on record with it: chain of custody.
    digest = (result.details or {}).get("digest")
    kept = f"; digest {digest}" if digest else ""
    return clip_message(
        f"Falco rule {event.rule!r} matched table rule {report.decision.table_rule!r}: "
        f"{report.decision.action} {outcome}{kept}; Falco event {event.uuid}"
        f"{'; ' + note if note else ''}")


def clip_message(message: str) -> str:
    return message if len(message) <= MESSAGE_LIMIT else message[:MESSAGE_LIMIT - 1] + "…"


def event_name(object_name: str) -> str:
    """`<object>.<16 hex>`, unique per call, as kubectl names its Events."""
    suffix = "." + secrets.token_hex(8)
    return object_name[:NAME_LIMIT - len(suffix)] + suffix


def describe(event: Event, report: ActionReport) -> str:
    """What an Event would have said, for the log line of one that was dropped."""
    ref = involved_object(report)
    where = f"{ref.kind} {ref.namespace + '/' if ref.namespace else ''}{ref.name}" if ref \
        else "no object"
    return (f"{report.decision.action} {report.result.outcome} on {where} "
            f"(table rule {report.decision.table_rule!r}, uuid={event.uuid})")
