"""Blast-radius guardrails, checked against the live cluster just before an action runs.

PodFacts and Clearance live in responder.actions (actions read and return them); they are
named here too for the modules that use the guardrails."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from .actions import Action, Clearance, Guard, Limits, Outcome, PodFacts, Result, Target
from .decisions import Decision
from .shared import SharedState

__all__ = ["Clearance", "Guardrails", "PodFacts", "Verdict", "Verification", "read_pod",
           "unverified_reason", "verify_container"]
logger = logging.getLogger(__name__)
#: A container.id as Falco sends it: the 12-character short id or the full 64-character id.
CONTAINER_ID = re.compile(r"\A(?:[0-9a-f]{12}|[0-9a-f]{64})\Z")


def read_pod(core: CoreV1Api, target: Target, timeout: float) -> PodFacts:
    """The pod's facts; PodFacts(exists=False) on 404. Other API errors propagate."""
    try:
        pod = core.read_namespaced_pod(target.pod, target.namespace, _request_timeout=timeout)
    except ApiException as exc:
        if exc.status == 404:
            return PodFacts(exists=False)
        raise
    statuses = [*(pod.status.container_statuses or []), *(pod.status.init_container_statuses or []),
                *(pod.status.ephemeral_container_statuses or [])] if pod.status else []
    return PodFacts(
        exists=True,
        node=pod.spec.node_name if pod.spec else None,
        uid=pod.metadata.uid,
        # "containerd://<64 hex>" (cri-o://, docker://): the runtime prefix is not the id.
        container_ids=tuple(s.container_id.split("://", 1)[-1].lower() for s in statuses
                            if s.container_id),
        owner_kinds=tuple(o.kind for o in pod.metadata.owner_references or []),
        deleting=pod.metadata.deletion_timestamp is not None,
        deletion_grace_seconds=pod.metadata.deletion_grace_period_seconds,
        obj=pod,
    )


class Verdict(StrEnum):
    """What the cluster says about the pod an event names."""

    #: The event's container is one of the pod's: the pod is the event's own.
    VERIFIED = "verified"
    #: The pod exists, but the event carries no container.id to check it by (every
    #: k8s_audit event; a syscall event missing the field).
    UNVERIFIABLE = "unverifiable"
    #: The container.id is not one Falco sends, or not one of the pod's: stale or forged.
    CONTRADICTED = "contradicted"
    #: No pod was read: none named, a host process, or the pod is gone already.
    NO_POD = "no-pod"


@dataclass(frozen=True)
class Verification:
    verdict: Verdict
    #: Why the event is not verified, for the decision's reason.
    reason: str | None = None

    @property
    def pod_is_the_events(self) -> bool:
        """Whether the pod read may name the node and the uid to act on."""
        return self.verdict in (Verdict.VERIFIED, Verdict.UNVERIFIABLE)


def container_id_problem(value: Any) -> str | None:
    """Why `value` is not a container.id as Falco sends it, or None when it is one. Said as
    "container not in pod": no container of any pod has such an id."""
    if not isinstance(value, str):
        return (f"container not in pod (container.id is a JSON {_json_type(value)}, "
                "not a string as Falco sends it)")
    if not CONTAINER_ID.match(value):
        return (f"container not in pod (container.id {shown(value)} is not an id as Falco "
                "sends it: 12 or 64 lower-case hex characters)")
    return None


def verify_container(pod: PodFacts | None, container_id: Any) -> Verification:
    """Whether the event's container.id (as the event has it, any JSON type; None when
    missing) shows that `pod` is the event's own."""
    if container_id is not None and container_id != "host" and (
            problem := container_id_problem(container_id)):
        return Verification(Verdict.CONTRADICTED, problem)
    if pod is None or not pod.exists:
        return Verification(Verdict.NO_POD)
    if container_id is None or container_id == "host":
        return Verification(Verdict.UNVERIFIABLE,
                            "event has no container.id, so the pod cannot be verified")
    if not any(_same_container(container_id, own) for own in pod.container_ids):
        # A recreated pod with the same name, or a forged event: never act on it.
        return Verification(Verdict.CONTRADICTED, f"container not in pod (container.id "
                            f"{container_id} is not one of its own)")
    return Verification(Verdict.VERIFIED)


def _same_container(event_id: str, pod_id: str) -> bool:
    # Falco sends the short id (the first 12 characters) or the full one; the pod's status
    # holds the full id. An exact length, never a bare prefix: "5" must not match.
    return pod_id == event_id if len(event_id) == 64 else (
        len(pod_id) == 64 and pod_id.startswith(event_id))


def shown(value: Any, limit: int = 80) -> str:
    """A sender's value as quoted in a reason or log line: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


def unverified_reason(decision: Decision, verification: Verification) -> str | None:
    """Why a destructive action may not run on an event nothing in the cluster confirms, or
    None. A pod without a container.id to check is unverified; so is a node known only from
    the event's hostname (a host process, or a pod already gone), which any sender can name."""
    if not decision.destructive or decision.allow_unverified or decision.dry_run:
        return None
    if verification.verdict is Verdict.UNVERIFIABLE:
        why, what = verification.reason, "pod"
    elif verification.verdict is Verdict.NO_POD and "pod" not in decision.needs:
        why = "no pod of the event's was read, so its node is only the event's hostname"
        what = "event"
    else:
        return None
    return (f"{why}; {decision.action} acts only on a verified {what} (table rule "
            f"{decision.table_rule} may say allow_unverified: true)")


class Guardrails:
    """Decides whether an action may run now (a Clearance): the checks every action gets,
    then the action's own (`Action.refusal`, `Action.clear`). Knows no action by name."""

    def __init__(self, shared: SharedState,
                 own_pod: tuple[str | None, str | None] = (None, None),
                 alert: Callable[[str], None] | None = None,
                 on_trip: Callable[[str], None] | None = None):
        self.shared = shared
        self.own_pod = own_pod
        self.alert = alert or (lambda text: None)
        self.on_trip = on_trip or (lambda name: None)

    def check(self, action: Action, decision: Decision, target: Target, pod: PodFacts | None,
              verification: Verification, limits: Limits,
              trip: Callable[[str, str], str] | None = None) -> Clearance:
        """Whether the action may run now under the plan's `limits`; a cleared action must be
        run and its result settled. `trip` replaces the counting, alerting one (a preview)."""
        if verification.verdict is Verdict.CONTRADICTED:
            # A node taken from a pod that is not the event's would be the wrong node, too.
            return Clearance(verification.reason)
        if "pod" in decision.needs and (
                reason := self._pod_reason(action, decision, target, pod, limits)):
            return Clearance(reason)
        if reason := unverified_reason(decision, verification):
            return Clearance(reason)
        return action.clear(Guard(limits, self.shared, trip or self._trip, decision.params),
                            target, pod)

    def preview(self, action: Action, decision: Decision, target: Target,
                pod: PodFacts | None, verification: Verification, limits: Limits) -> str | None:
        """Why the action would be skipped if it ran now, without running it: a place held
        in a limit goes back at once, and a limit reached neither counts nor alerts."""
        with action.exclusive():
            clearance = self.check(action, decision, target, pod, verification, limits,
                                   trip=lambda name, reason: reason)
            if clearance.reason:
                return clearance.reason
            clearance.settle(Result(Outcome.SKIPPED, "only a preview"))
        return clearance.answer.reason if clearance.answer else None

    def _pod_reason(self, action: Action, decision: Decision, target: Target,
                    pod: PodFacts | None, limits: Limits) -> str | None:
        own_namespace, own_name = self.own_pod
        if own_name and target.pod == own_name and own_namespace in (None, target.namespace):
            return "the responder's own pod"
        if pod is None or not pod.exists:
            return None  # the action itself reports "already gone" / "no longer exists"
        if reason := action.refusal(pod, decision.params):
            return reason
        if not pod.owner_kinds and limits.skip_standalone_pods:
            return "standalone pod: nothing would recreate it (skip_standalone_pods is on)"
        return None

    def _trip(self, name: str, reason: str) -> str:
        logger.warning("guardrail tripped: %s", reason)
        self.on_trip(name)
        self.alert(f"falco-responder guardrail tripped: {reason}. Actions are being skipped.")
        return reason
