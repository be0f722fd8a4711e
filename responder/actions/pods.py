"""Actions on the pod an event points at."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client import V1DeleteOptions, V1Preconditions
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ConnectTimeoutError

from .base import (
    Action,
    Clearance,
    Guard,
    Incident,
    Kind,
    Limit,
    Outcome,
    Param,
    PodFacts,
    Rbac,
    Result,
    Target,
    object_ref,
)
from .labels import labels_problems

logger = logging.getLogger(__name__)
MERGE_PATCH = "application/merge-patch+json"
#: Who the API server records as setting what our patches set (managedFields): undo puts
#: back only what is still ours, not what someone set again since.
FIELD_MANAGER = "falco-responder"
#: Why a deletion counts whose DELETE answered an error, but whose retry found the pod gone.
LOST_ANSWER = "deleted (the API's first answer was lost)"
POD = Kind("Pod", "v1", name_from="pod", namespaced=True)
DELETIONS = "pod-deletions"  # the limit's name, in the shared state and the trips metric
#: The guardrails read the event's pod before any pod action (its containers, owners, node).
READ_POD = Rbac("pods", ("get",), why="read the event's pod first: its containers (the "
                "event's container must be one of them), its owners and its node")


def _non_negative(value: int) -> list[str]:
    return [] if value >= 0 else ["must be 0 or more"]


class DeletePod(Action):
    """Delete the pod; its controller (if any) starts a clean replacement."""

    name = "delete-pod"
    needs = ("namespace", "pod")
    acts_on = POD
    params = {
        "grace_period_seconds": Param(
            (int,), check=_non_negative,
            doc="seconds the pod may take to stop; 0 kills at once; default: the pod's own"),
        "allow_daemonset": Param(
            (bool,), doc="also delete pods owned by a DaemonSet (off: they are skipped)"),
    }
    rbac = (READ_POD, Rbac("pods", ("delete",), why="delete the pod"))
    limits = (Limit("max_pod_deletions_per_minute", 10,
                    doc="pod deletions per minute, across replicas; past it, deletions are "
                    "skipped"),)
    object_survives = False
    destructive = True
    reversal = None  # the pod is gone; its controller, not the responder, brings one back

    def refusal(self, pod: PodFacts, params: Mapping[str, Any]) -> str | None:
        if "DaemonSet" in pod.owner_kinds and not params.get("allow_daemonset", False):
            return "pod belongs to a DaemonSet (set allow_daemonset: true to delete it)"
        return None

    def clear(self, guard: Guard, target: Target, pod: PodFacts | None) -> Clearance:
        """Hold a place in the deletion limit before the DELETE, so that concurrent deletes
        never exceed it; it counts only once the API deleted the pod. A pod already being
        deleted is left to finish, unless the DELETE would shorten its grace."""
        if pod and pod.deleting and not _shortens_grace(pod, guard.params):
            return Clearance(answer=Result(Outcome.ALREADY_DONE, "already being deleted"))
        limit = guard.limits.value(self.limits[0])
        # Keyed by the pod (its uid: a recreated pod is a new deletion), so the retries of
        # one deletion after transient API errors count once, not once per attempt.
        member = (pod.uid if pod and pod.uid else None) or f"{target.namespace}/{target.pod}"
        token = guard.shared.reserve_in_window(DELETIONS, limit, 60.0, member)
        if token is None:
            return Clearance(guard.trip(DELETIONS,
                                        f"pod deletion limit reached ({limit} per minute)"))
        return Clearance(settle=lambda result: _settle_deletion(guard, token, member, result))

    def attempts(self, target: Target, params: Mapping[str, Any],
                 incident: Incident | None = None) -> Callable[[], Result]:
        # A DELETE whose answer was lost (a timeout, a 5xx) may have deleted the pod: the
        # retry then finds it gone, and that deletion is ours, to be counted.
        lost: list[BaseException] = []

        def attempt() -> Result:
            try:
                return self._delete(target, params, answer_lost=bool(lost))
            except Exception as exc:
                if answer_may_be_lost(exc):
                    lost.append(exc)
                raise
        return attempt

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        return self._delete(target, params, answer_lost=False)

    def _delete(self, target: Target, params: Mapping[str, Any], answer_lost: bool) -> Result:
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
            return _refused_delete(exc, answer_lost)
        return Result(Outcome.DONE, involved=object_ref(pod, POD))


def _refused_delete(exc: ApiException, answer_lost: bool) -> Result:
    """What a DELETE answered with 404 or a failed uid precondition means; other errors
    propagate. After a try whose answer was lost, the pod verified before acting is gone
    (404), or another has its name (409 on the uid): our DELETE most likely removed it, and
    a blast-radius limit must rather count one deletion too many than one too few."""
    replaced = precondition_failed(exc)
    if answer_lost and (exc.status == 404 or replaced):
        return Result(Outcome.DONE, LOST_ANSWER + ("; a new pod has its name now" if replaced
                                                   else ""))
    if exc.status == 404:
        return Result(Outcome.ALREADY_DONE, "already gone")
    if replaced:
        return Result(Outcome.SKIPPED, "pod was replaced since the event (uid changed)")
    raise exc


def answer_may_be_lost(exc: BaseException) -> bool:
    """Whether a failed request may have been carried out all the same: it reached the API
    server, but no answer came back (a read timeout, a dropped connection) or a 5xx did,
    which a proxy or the server may send after acting. A refused connection or a 4xx
    (429 throttling, 409 conflict) did nothing."""
    if isinstance(exc, ApiException):
        return not exc.status or exc.status >= 500
    cause = getattr(exc, "reason", None)  # urllib3's MaxRetryError wraps the cause
    return not any(isinstance(e, ConnectTimeoutError | ConnectionRefusedError)
                   for e in (exc, cause))


def _shortens_grace(pod: PodFacts, params: Mapping[str, Any]) -> bool:
    """Whether a DELETE of a pod being deleted would make it stop sooner (the API then
    shortens its grace); one with the pod's own grace changes nothing."""
    grace = params.get("grace_period_seconds")
    return grace is not None and (pod.deletion_grace_seconds is None
                                  or grace < pod.deletion_grace_seconds)


def _settle_deletion(guard: Guard, token: str, member: str, result: Result) -> None:
    # A 404 ("already gone"), a refusal or a replaced pod deleted nothing: its place
    # goes back. A failure the event will retry may have deleted (a timeout after the
    # API acted), so it keeps its place, which the retry then reuses.
    happened = result.outcome is Outcome.DONE or (
        result.outcome is Outcome.FAILED and result.retryable)
    try:
        guard.shared.settle_in_window(DELETIONS, token, member, happened)
    except Exception as exc:  # noqa: BLE001 - e.g. Redis down: the place just runs out
        logger.warning("cannot settle a pod deletion in the limit (%s)", type(exc).__name__)


class LabelPod(Action):
    """Add labels to the pod, e.g. so a NetworkPolicy isolates it for forensics."""

    name = "label-pod"
    needs = ("namespace", "pod")
    acts_on = POD
    params = {
        "labels": Param((dict,), required=True, check=labels_problems,
                        doc="label keys and string values to set on the pod"),
    }
    rbac = (READ_POD, Rbac("pods", ("patch",), why="set the labels (a JSON merge patch); "
                           "undo puts back the values they replaced"))
    reversal = "put back the values the labels had before (removing those that were absent); " \
        "a label changed, or set again by someone, since is left alone"

    def attempts(self, target: Target, params: Mapping[str, Any],
                 incident: Incident | None = None) -> Callable[[], Result]:
        # The values before the first try: a retry after a lost answer reads our own values,
        # and undo must put back what was there before us.
        before: dict[str, Any] = {}
        return lambda: self._label(target, dict(params["labels"]), before)

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        return self._label(target, dict(params["labels"]), {})

    def _label(self, target: Target, labels: dict[str, str], before: dict[str, Any]) -> Result:
        pod = read_pod_or_reason(self, target)
        if isinstance(pod, Result):
            return pod
        if not before:
            current = pod.metadata.labels or {}
            before.update(uid=pod.metadata.uid, previous={k: current.get(k) for k in labels})
        result = self._patch_labels(target, {"uid": before["uid"], "labels": labels})
        if result.outcome is not Outcome.DONE:
            return result
        return dataclasses.replace(result, details={
            "pod_uid": before["uid"], "set": labels, "previous": before["previous"],
            "field_manager": FIELD_MANAGER})

    def undo(self, target: Target, details: Mapping[str, Any]) -> Result:
        """Put back the labels' values before on the same pod (by uid), each only while it
        still has the value we set."""
        pod = read_pod_or_reason(self, dataclasses.replace(target, pod_uid=details.get("pod_uid")))
        if isinstance(pod, Result):
            return pod
        ours = details.get("field_manager")
        taken = {key: ", ".join(sorted(managers - {ours}))
                 for key, managers in label_owners(pod).items() if ours and managers - {ours}}
        restore, left = label_restoration(pod.metadata.labels or {}, details.get("set") or {},
                                          details.get("previous") or {}, taken)
        changed = f"changed since, left alone: {', '.join(left)}" if left else None
        if not restore:
            return Result(Outcome.SKIPPED, changed, object_ref(pod, POD)) if left else \
                Result(Outcome.ALREADY_DONE, "already undone (the labels are as they were)",
                       object_ref(pod, POD))
        # With the version read: a label changed meanwhile is a 409, and the retry reads again.
        result = self._patch_labels(target, {"uid": pod.metadata.uid, "labels": restore,
                                             "resourceVersion": pod.metadata.resource_version})
        return dataclasses.replace(result, reason=changed) if result.outcome is Outcome.DONE \
            else result

    def _patch_labels(self, target: Target, meta: dict[str, Any]) -> Result:
        try:
            pod = self.core.patch_namespaced_pod(
                target.pod, target.namespace, {"metadata": meta}, field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH, _request_timeout=self.timeout)
        except ApiException as exc:
            return refused_patch(exc)
        return Result(Outcome.DONE, involved=object_ref(pod, POD))


def label_owners(pod: Any) -> dict[str, set[str]]:
    """Each label's field managers as the API server records them (whoever last changed
    it; an update that changes nothing owns nothing). Empty without managedFields."""
    owners: dict[str, set[str]] = {}
    for entry in pod.metadata.managed_fields or []:
        labels = ((entry.fields_v1 or {}).get("f:metadata") or {}).get("f:labels") or {}
        for field in labels:
            if field.startswith("f:") and entry.manager:
                owners.setdefault(field[2:], set()).add(entry.manager)
    return owners


def label_restoration(current: Mapping[str, str], set_: Mapping[str, str],
                      previous: Mapping[str, str | None],
                      taken: Mapping[str, str] | None = None
                      ) -> tuple[dict[str, str | None], list[str]]:
    """What undoing a label-pod puts back: the previous value (None: remove) of each label
    that still has the value we set, unless someone else set it again since (`taken`: label
    to who); and, said for people, the labels changed or set again since (left alone). A
    label we set to the value it already had needs nothing. Pure."""
    restore: dict[str, str | None] = {}
    left = []
    for key, value in set_.items():
        before, now = previous.get(key), current.get(key)
        if value == before:
            continue
        if now == value and taken and key in taken:
            left.append(f"{key} (set again since by {taken[key]})")
        elif now == value:
            restore[key] = before
        elif now != before:
            left.append(f"{key} (now {now!r})" if now is not None else f"{key} (removed)")
    return restore, left


def known_pod(incident: Incident | None, target: Target) -> Any:
    """The pod the executor read for this event when it is the target's (its name, and the
    uid the target names); None: the action reads it."""
    pod = incident.pod if incident else None
    if pod is None or pod.metadata is None:
        return None
    meta = pod.metadata
    if (meta.name, meta.namespace) != (target.pod, target.namespace):
        return None
    return pod if not target.pod_uid or meta.uid == target.pod_uid else None


def read_pod_or_reason(action: Action, target: Target, timeout: float | None = None) -> Any:
    """The pod, or a SKIPPED result saying it is gone or is another pod than `pod_uid`;
    read within the action's timeout, or `timeout` seconds where that is shorter."""
    seconds = action.timeout if timeout is None else min(action.timeout, timeout)
    try:
        pod = action.core.read_namespaced_pod(target.pod, target.namespace,
                                              _request_timeout=seconds)
    except ApiException as exc:
        if exc.status == 404:
            return Result(Outcome.SKIPPED, "pod no longer exists")
        raise
    if target.pod_uid and pod.metadata.uid != target.pod_uid:
        return Result(Outcome.SKIPPED, "pod was replaced since the event (uid changed)")
    return pod


def precondition_failed(exc: ApiException) -> bool:
    """Whether a DELETE was refused on its uid precondition: another object has the name."""
    return exc.status == 409 and "precondition" in (exc.body or "").lower()


def refused_patch(exc: ApiException) -> Result:
    """What a pod merge patch answered with 404, or 422 on the uid it names, means; other
    errors propagate."""
    if exc.status == 404:
        return Result(Outcome.SKIPPED, "pod no longer exists")
    # A merge patch naming another uid is refused: 422 "metadata.uid ... immutable".
    if exc.status == 422 and "metadata.uid" in (exc.body or ""):
        return Result(Outcome.SKIPPED, "pod was replaced since the event (uid changed)")
    raise exc
