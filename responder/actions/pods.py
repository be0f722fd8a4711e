"""Actions on the pod an event points at."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client import V1DeleteOptions, V1Preconditions
from kubernetes.client.exceptions import ApiException

from .base import Action, Outcome, Param, Rbac, Result, Target, object_ref
from .labels import labels_problems

MERGE_PATCH = "application/merge-patch+json"


def _non_negative(value: int) -> list[str]:
    return [] if value >= 0 else ["must be 0 or more"]


class DeletePod(Action):
    """Delete the pod; its controller (if any) starts a clean replacement."""

    name = "delete-pod"
    needs = ("namespace", "pod")
    params = {
        "grace_period_seconds": Param(
            (int,), check=_non_negative,
            doc="seconds the pod may take to stop; 0 kills at once; default: the pod's own"),
        "allow_daemonset": Param(
            (bool,), doc="also delete pods owned by a DaemonSet (off: they are skipped)"),
    }
    # get: the guardrails read the pod first (containers, owners, node).
    rbac = (Rbac("pods", ("get", "delete")),)
    object_survives = False
    destructive = True

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        # With the uid of the pod the guardrails verified, a pod recreated under the same name
        # in the meantime (a StatefulSet's, say) is never the one deleted.
        preconditions = V1Preconditions(uid=target.pod_uid) if target.pod_uid else None
        body = V1DeleteOptions(grace_period_seconds=params.get("grace_period_seconds"),
                               preconditions=preconditions)
        try:
            pod = self.core.delete_namespaced_pod(
                target.pod, target.namespace, body=body,
                _content_type="application/json", _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return Result(Outcome.ALREADY_DONE, "already gone")
            if exc.status == 409 and "precondition" in (exc.body or "").lower():
                return Result(Outcome.SKIPPED, "pod was replaced since the event (uid changed)")
            raise
        return Result(Outcome.DONE, involved=object_ref(pod))


class LabelPod(Action):
    """Add labels to the pod, e.g. so a NetworkPolicy isolates it for forensics."""

    name = "label-pod"
    needs = ("namespace", "pod")
    params = {
        "labels": Param((dict,), required=True, check=labels_problems,
                        doc="label keys and string values to set on the pod"),
    }
    rbac = (Rbac("pods", ("get", "patch")),)

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        patch = {"metadata": {"labels": dict(params["labels"])}}
        try:
            pod = self.core.patch_namespaced_pod(
                target.pod, target.namespace, patch,
                _content_type=MERGE_PATCH, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return Result(Outcome.SKIPPED, "pod no longer exists")
            raise
        return Result(Outcome.DONE, involved=object_ref(pod))
