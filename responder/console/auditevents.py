"""The audit Events of one alert, read back from the cluster (best-effort, for the console)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api

from ..actions import api_failure
from ..audit import CLUSTER_SCOPED_NAMESPACE, REASON

MAX_OBJECTS = 10  # objects one alert's actions touch: a pod and its node, at most a few


@dataclass(frozen=True)
class AuditListing:
    """The Events found, or why none could be read (`problem`)."""

    events: list[dict[str, Any]]
    problem: str | None = None


def involved_names(decisions: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(namespace, object name) of what the decisions acted on: their pods, and nodes
    (whose Events live in "default"). Pure."""
    found: list[tuple[str, str]] = []
    for decision in decisions:
        target = decision.get("target") or {}
        names = []
        if target.get("pod") and target.get("namespace"):
            names.append((target["namespace"], target["pod"]))
        if target.get("node"):
            names.append((CLUSTER_SCOPED_NAMESPACE, target["node"]))
        found += [n for n in names if n not in found]
    return found[:MAX_OBJECTS]


def list_audit_events(api_client: ApiClient | None, uuid: str,
                      decisions: list[Mapping[str, Any]], timeout: float) -> AuditListing:
    """The FalcoResponse Events naming this alert's uuid on the objects its decisions name.
    Never raises: an unreachable or forbidding API is said in `problem`."""
    if api_client is None:
        return AuditListing([], "no Kubernetes cluster configured: no audit Events to show")
    core = CoreV1Api(api_client)
    found = []
    for namespace, name in involved_names(decisions):
        try:
            listed = core.list_namespaced_event(
                namespace, field_selector=f"reason={REASON},involvedObject.name={name}",
                _request_timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - the page must render whatever the API says
            return AuditListing(found, f"cannot list audit Events in {namespace}: "
                                       f"{api_failure(exc)}")
        found += [_row(item) for item in listed.items if uuid in (item.message or "")]
    found.sort(key=lambda row: row["time"])
    return AuditListing(found)


def _row(item: Any) -> dict[str, Any]:
    obj = item.involved_object
    when = item.event_time or item.last_timestamp or item.first_timestamp
    return {"time": when.isoformat() if when else "", "kind": obj.kind, "name": obj.name,
            "namespace": obj.namespace, "action": item.action, "message": item.message,
            "instance": item.reporting_instance}
