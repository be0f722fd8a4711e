"""Blast-radius guardrails, checked against the live cluster just before an action runs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from .actions import Target
from .decisions import Decision
from .shared import SharedState
from .table import Limits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PodFacts:
    """What the API says about the event's pod, read once per event before any action."""

    exists: bool
    node: str | None = None
    uid: str | None = None
    container_ids: tuple[str, ...] = ()
    owner_kinds: tuple[str, ...] = ()


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
        # "containerd://<64 hex>": Falco reports the first 12 characters of the id.
        container_ids=tuple(s.container_id.split("://", 1)[-1] for s in statuses
                            if s.container_id),
        owner_kinds=tuple(o.kind for o in pod.metadata.owner_references or []),
    )


def container_mismatch(pod: PodFacts, container_id: str | None) -> bool:
    """True when the event names a container that is not one of this pod's: the name now
    belongs to another pod (recreated), or the event is stale or forged."""
    return bool(container_id) and container_id != "host" and not any(
        c.startswith(container_id) for c in pod.container_ids)


class Guardrails:
    """Decides whether an action may run now; a reason string means skip it."""

    def __init__(self, limits: Limits, shared: SharedState, core: CoreV1Api, timeout: float,
                 own_pod: tuple[str | None, str | None] = (None, None),
                 alert: Callable[[str], None] | None = None,
                 on_trip: Callable[[str], None] | None = None):
        self.limits = limits
        self.shared = shared
        self.core = core
        self.timeout = timeout
        self.own_pod = own_pod
        self.alert = alert or (lambda text: None)
        self.on_trip = on_trip or (lambda name: None)

    def check(self, decision: Decision, target: Target, pod: PodFacts | None,
              container_id: str | None) -> str | None:
        if "pod" in decision.needs:
            reason = self._pod_reason(decision, target, pod, container_id)
            if reason:
                return reason
        elif pod is not None and pod.exists and container_mismatch(pod, container_id):
            # A node taken from a pod that is not the event's would be the wrong node.
            return f"container not in pod (container.id {container_id} is not one of its own)"
        if decision.action == "delete-pod":
            return self._deletion_limit(target, pod)
        if decision.action == "cordon-node":
            return self._cordon_limit(target.node)
        return None

    def _pod_reason(self, decision: Decision, target: Target, pod: PodFacts | None,
                    container_id: str | None) -> str | None:
        own_namespace, own_name = self.own_pod
        if own_name and target.pod == own_name and own_namespace in (None, target.namespace):
            return "the responder's own pod"
        if pod is None or not pod.exists:
            return None  # the action itself reports "already gone" / "no longer exists"
        if container_mismatch(pod, container_id):
            # A recreated pod with the same name, or a forged event: never act on it.
            return f"container not in pod (container.id {container_id} is not one of its own)"
        if (decision.action == "delete-pod" and "DaemonSet" in pod.owner_kinds
                and not _param(decision, "allow_daemonset")):
            return "pod belongs to a DaemonSet (set allow_daemonset: true to delete it)"
        if not pod.owner_kinds and self.limits.skip_standalone_pods:
            return "standalone pod: nothing would recreate it (skip_standalone_pods is on)"
        return None

    def _deletion_limit(self, target: Target, pod: PodFacts | None) -> str | None:
        limit = self.limits.max_pod_deletions_per_minute
        # Keyed by the pod (its uid: a recreated pod is a new deletion), so the retries of
        # one deletion after transient API errors count once, not once per attempt.
        member = (pod.uid if pod and pod.uid else None) or f"{target.namespace}/{target.pod}"
        if self.shared.allow_in_window("pod-deletions", limit, 60.0, member):
            return None
        return self._trip("pod-deletions", f"pod deletion limit reached ({limit} per minute)")

    def _cordon_limit(self, node_name: str | None) -> str | None:
        nodes = self.core.list_node(_request_timeout=self.timeout).items
        cordoned = {n.metadata.name for n in nodes if n.spec and n.spec.unschedulable}
        if node_name in cordoned:
            return None  # the action reports "already cordoned"
        limit = self.limits.max_cordoned_nodes
        if len(cordoned) >= limit:
            return self._trip("cordoned-nodes",
                              f"cordon limit reached ({len(cordoned)} of at most {limit} "
                              "nodes already cordoned)")
        schedulable = [n for n in nodes if n.metadata.name not in cordoned]
        if len(schedulable) <= 1:
            return self._trip("last-node", "would cordon the last schedulable node")
        return None

    def _trip(self, name: str, reason: str) -> str:
        logger.warning("guardrail tripped: %s", reason)
        self.on_trip(name)
        self.alert(f"falco-responder guardrail tripped: {reason}. Actions are being skipped.")
        return reason


def _param(decision: Decision, name: str) -> Any:
    return decision.params.get(name, False)
