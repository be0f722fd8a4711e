"""Cutting one pod off the network while it keeps running, for forensics."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client import AppsV1Api, NetworkingV1Api, V1DeleteOptions, V1Preconditions
from kubernetes.client.exceptions import ApiException

from .base import (
    Action,
    Incident,
    Kind,
    ObjectRef,
    Outcome,
    Param,
    PodFacts,
    Rbac,
    Result,
    Target,
    object_ref,
)
from .labels import label_map_problems, label_value_problem
from .pods import (
    FIELD_MANAGER,
    MERGE_PATCH,
    POD,
    READ_POD,
    known_pod,
    precondition_failed,
    read_pod_or_reason,
    refused_patch,
)

POLICY = Kind("NetworkPolicy", "networking.k8s.io/v1", name_from="pod", namespaced=True)
#: The label the action adds; the policy selects the pod by it, and by nothing else.
ISOLATED = "falco-responder.io/isolated"
POLICY_PREFIX = "isolate-"
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
KUBE_DNS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
SELECTOR_KEYS = ("namespace_selector", "pod_selector")


def _digest(text: str, length: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def isolation_label(pod: str) -> str:
    """The label value naming the pod: its name, or a hash when the name is too long for a
    label value (pod names may be 253 characters, label values 63)."""
    return pod if label_value_problem(pod) is None else "h-" + _digest(pod, 32)


def policy_name(pod: str) -> str:
    """The NetworkPolicy's name: `isolate-<pod>`, cut and given a hash suffix when that would
    pass the 253 characters of a DNS subdomain."""
    name = POLICY_PREFIX + pod
    if len(name) <= 253:
        return name
    return (POLICY_PREFIX + pod[:253 - len(POLICY_PREFIX) - 17]).rstrip("-.") + "-" + _digest(pod)


def _cidrs_problems(value: list) -> list[str]:
    problems = []
    for i, cidr in enumerate(value):
        if not isinstance(cidr, str):  # ip_network takes ints and packed bytes too
            problems.append(f"[{i}] {cidr!r}: not a CIDR (write it as text, e.g. 10.0.0.0/8)")
            continue
        try:
            ipaddress.ip_network(cidr, strict=True)
        except (TypeError, ValueError) as exc:
            problems.append(f"[{i}] {cidr!r}: not a CIDR ({exc})")
    return problems


def _selector_problems(where: str, selector: Any) -> list[str]:
    if not isinstance(selector, dict):
        return [f"{where}: must be a mapping of label keys to values"]
    return label_map_problems(selector, f"{where}: ")


def _ingress_problems(value: list) -> list[str]:
    problems = []
    for i, peer in enumerate(value):
        if not isinstance(peer, dict) or not peer or set(peer) - set(SELECTOR_KEYS):
            problems.append(f"[{i}]: must be a mapping with namespace_selector and/or "
                            "pod_selector (label keys to values)")
            continue
        for key in SELECTOR_KEYS:
            if key in peer:
                problems += _selector_problems(f"[{i}].{key}", peer[key])
    return problems


def policy_body(pod: str, uid: str, params: Mapping[str, Any]) -> dict:
    """The NetworkPolicy isolating `pod`: deny all, but what the params allow; owned by the
    pod, so the garbage collector deletes it with the pod."""
    egress = [{"to": [KUBE_DNS], "ports": DNS_PORTS}] if params.get("allow_dns") else []
    egress += [{"to": [{"ipBlock": {"cidr": cidr}} for cidr in cidrs]}]  \
        if (cidrs := params.get("allow_egress_cidrs")) else []
    ingress = [{"from": [_peer(p) for p in peers]}] \
        if (peers := params.get("allow_ingress_from")) else []
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": policy_name(pod), "labels": {ISOLATED: isolation_label(pod)},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod,
                                          "uid": uid}]},
        "spec": {"podSelector": {"matchLabels": {ISOLATED: isolation_label(pod)}},
                 "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": egress},
    }


ALREADY_BY_EARLIER = "already isolated by the isolate-pod before it"


def isolated_earlier(incident: Incident | None, target: Target) -> Mapping[str, Any] | None:
    """The report of an isolate-pod earlier in the same plan that isolated this pod (done or
    already done, with what undo needs), or None. Pure."""
    for report in incident.earlier if incident else ():
        details = report.get("details") or {}
        if (report.get("action") == IsolatePod.name
                and report.get("outcome") in (Outcome.DONE, Outcome.ALREADY_DONE)
                and details.get("policy") and details.get("pod_uid")
                and report.get("target", {}).get("pod") == target.pod
                and report.get("target", {}).get("namespace") == target.namespace):
            return report
    return None


def _peer(peer: Mapping[str, Any]) -> dict:
    out = {}
    if "namespace_selector" in peer:
        out["namespaceSelector"] = {"matchLabels": dict(peer["namespace_selector"])}
    if "pod_selector" in peer:
        out["podSelector"] = {"matchLabels": dict(peer["pod_selector"])}
    return out


class IsolatePod(Action):
    """Cut the pod off the network with a deny-all NetworkPolicy of its own; it keeps running."""

    name = "isolate-pod"
    needs = ("namespace", "pod")
    acts_on = POLICY
    params = {
        "allow_dns": Param((bool,), doc="allow egress to the cluster DNS (kube-dns pods in "
                           "kube-system, UDP and TCP 53)"),
        "allow_egress_cidrs": Param((list,), check=_cidrs_problems,
                                    doc="CIDRs the pod may still reach (e.g. a log sink)"),
        "allow_ingress_from": Param(
            (list,), check=_ingress_problems,
            doc="peers that may still reach the pod (forensics tools): a list of "
            "{namespace_selector, pod_selector} label maps"),
        "detach": Param((bool,), doc="also remove the labels its ReplicaSet selects it by, so "
                        "a replacement starts while the isolated pod stays; other owners are "
                        "refused"),
    }
    rbac = (
        READ_POD,
        Rbac("pods", ("patch",), why=f"add the {ISOLATED} label the policy selects (undo "
             "removes it); with detach, remove the ReplicaSet's selector labels"),
        Rbac("networkpolicies", ("get",), "networking.k8s.io",
             why="tell our existing policy (already isolated) from another of the same name"),
        Rbac("networkpolicies", ("create",), "networking.k8s.io",
             why="create the pod's deny-all policy"),
        Rbac("networkpolicies", ("delete",), "networking.k8s.io",
             why="delete the policy to undo the isolation"),
        Rbac("replicasets", ("get",), "apps",
             why="with detach only: read the owning ReplicaSet's selector"),
    )
    object_survives = True
    destructive = True  # the pod's workload loses it: a forged event must not cut it off
    reversal = f"delete the NetworkPolicy and remove the {ISOLATED} label (a detached pod " \
        "stays detached)"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.networking = NetworkingV1Api(self.api)
        self.apps = AppsV1Api(self.api)

    def refusal(self, pod: PodFacts, params: Mapping[str, Any]) -> str | None:
        if params.get("detach") and "ReplicaSet" not in pod.owner_kinds:
            owners = ", ".join(pod.owner_kinds) or ("none (a standalone pod, or one "
                                                    "detached already)")
            return (f"detach needs a pod owned by a ReplicaSet (owner: {owners}); nothing "
                    "would start a replacement")
        return None

    def attempts(self, target: Target, params: Mapping[str, Any],
                 incident: Incident | None = None) -> Callable[[], Result]:
        earlier = isolated_earlier(incident, target)
        if earlier is None:
            return lambda: self.isolate(target, params, incident)
        # The packaged table isolates twice (detached, then in place for pods detach
        # refuses): the second would cost 3 requests of the containment budget to learn
        # what the first just recorded. Its details are the first's: undo reads the same.
        details = earlier["details"]
        involved = ObjectRef(POLICY.kind, details["policy"], target.namespace,
                             details.get("policy_uid"), POLICY.api_version)
        return lambda: Result(Outcome.ALREADY_DONE, ALREADY_BY_EARLIER, involved,
                              details=details)

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        return self.isolate(target, params, None)

    def isolate(self, target: Target, params: Mapping[str, Any],
                incident: Incident | None) -> Result:
        detached: dict[str, str] = {}
        if params.get("detach"):
            found = self._selector_labels(target, incident)
            if isinstance(found, Result):
                return found
            detached = found
        label = {ISOLATED: isolation_label(target.pod)}
        pod = self._patch_labels(target, label)
        if isinstance(pod, Result):
            return pod
        result = self._create_policy(target, pod.metadata.uid, params)
        if result.outcome not in (Outcome.DONE, Outcome.ALREADY_DONE):
            return result
        if detached:
            gone = self._patch_labels(target, dict.fromkeys(detached))
            if isinstance(gone, Result):
                return gone
        # What undo needs: the policy (by uid, so a stranger's of the same name is never
        # deleted), our label, and the labels detach took (undo does not put them back).
        return dataclasses.replace(result, details={
            "pod_uid": pod.metadata.uid, "policy": policy_name(target.pod),
            "policy_uid": result.involved.uid if result.involved else None,
            "label": label, "detached": detached})

    def undo(self, target: Target, details: Mapping[str, Any]) -> Result:
        """Delete the policy and remove the label; the labels detach took stay off: the
        ReplicaSet has started a replacement, and putting them back would make it one pod
        too many (the ReplicaSet would then delete one, maybe this one)."""
        name = details.get("policy") or policy_name(target.pod)
        deleted = self._delete_policy(target, name, details.get("policy_uid"))
        if isinstance(deleted, str) and self._selects_isolated(target, name):
            # A later isolation's policy has the name now, and selects the pod by the same
            # label: removing it would quietly undo that isolation too.
            notes = [deleted, f"the {ISOLATED} label stays (that policy selects the pod by it)",
                     _detached_note(details.get("detached"))]
            return Result(Outcome.SKIPPED, "; ".join(n for n in notes if n))
        uid = details.get("pod_uid") or target.pod_uid
        pod = read_pod_or_reason(self, dataclasses.replace(target, pod_uid=uid))
        removed = False
        if not isinstance(pod, Result) and ISOLATED in (pod.metadata.labels or {}):
            pod = self._patch_labels(dataclasses.replace(target, pod_uid=pod.metadata.uid),
                                     {ISOLATED: None})
            removed = not isinstance(pod, Result)
        notes = [note for note in (deleted if isinstance(deleted, str) else None,
                                   pod.reason if isinstance(pod, Result) else None,
                                   _detached_note(details.get("detached"))) if note]
        # The audit Event goes on the pod; on the deleted policy when the pod is gone.
        involved = object_ref(pod, POD) if not isinstance(pod, Result) else ObjectRef(
            POLICY.kind, name, target.namespace, details.get("policy_uid"), POLICY.api_version)
        if deleted is True or removed:
            return Result(Outcome.DONE, "; ".join(notes) or None, involved)
        return Result(Outcome.ALREADY_DONE, "; ".join(["already undone", *notes]), involved)

    def _delete_policy(self, target: Target, name: str, uid: str | None) -> bool | str:
        """True when deleted now, False when already gone, else why it was left alone."""
        body = V1DeleteOptions(preconditions=V1Preconditions(uid=uid)) if uid else None
        try:
            self.networking.delete_namespaced_network_policy(
                name, target.namespace, body=body, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return False
            if precondition_failed(exc):
                return f"the NetworkPolicy {name} is another one now (uid changed); left alone"
            raise
        return True

    def _selects_isolated(self, target: Target, name: str) -> bool:
        """Whether the policy named `name` now selects pods by our isolation label."""
        try:
            policy = self.networking.read_namespaced_network_policy(
                name, target.namespace, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        selects = (policy.spec.pod_selector.match_labels or {}) if policy.spec else {}
        return ISOLATED in selects

    def _selector_labels(self, target: Target, incident: Incident | None
                         ) -> dict[str, str] | Result:
        """The pod's labels its owning ReplicaSet selects it by, or why it cannot be detached.
        The pod as the executor read it, else read (gone or replaced since: skipped)."""
        pod = known_pod(incident, target) or read_pod_or_reason(self, target)
        if isinstance(pod, Result):
            return pod
        owner = next((o for o in pod.metadata.owner_references or []
                      if o.kind == "ReplicaSet" and o.controller), None)
        if owner is None:
            return Result(Outcome.SKIPPED, "detach needs a pod controlled by a ReplicaSet")
        rs = self.apps.read_namespaced_replica_set(owner.name, target.namespace,
                                                   _request_timeout=self.timeout)
        match = (rs.spec.selector.match_labels or {}) if rs.spec.selector else {}
        if not match:
            return Result(Outcome.SKIPPED, f"detach: ReplicaSet {owner.name} selects by "
                          "matchExpressions only; removing labels may not release the pod")
        labels = pod.metadata.labels or {}
        return {key: labels[key] for key in match if key in labels}

    def _patch_labels(self, target: Target, labels: dict[str, Any]) -> Any:
        # With the verified pod's uid, a pod recreated under the same name is never patched.
        meta: dict[str, Any] = {"labels": labels}
        if target.pod_uid:
            meta["uid"] = target.pod_uid
        try:
            return self.core.patch_namespaced_pod(
                target.pod, target.namespace, {"metadata": meta}, field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH, _request_timeout=self.timeout)
        except ApiException as exc:
            return refused_patch(exc)

    def _create_policy(self, target: Target, uid: str, params: Mapping[str, Any]) -> Result:
        body = policy_body(target.pod, uid, params)
        try:
            policy = self.networking.create_namespaced_network_policy(
                target.namespace, body, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return self._existing_policy(target, uid)
        return Result(Outcome.DONE, involved=object_ref(policy, POLICY))

    def _existing_policy(self, target: Target, uid: str) -> Result:
        policy = self.networking.read_namespaced_network_policy(
            policy_name(target.pod), target.namespace, _request_timeout=self.timeout)
        owners = {o.uid for o in policy.metadata.owner_references or []}
        selects = (policy.spec.pod_selector.match_labels or {}) if policy.spec else {}
        if uid in owners and selects == {ISOLATED: isolation_label(target.pod)}:
            return Result(Outcome.ALREADY_DONE, "already isolated",
                          object_ref(policy, POLICY))
        return Result(Outcome.FAILED, f"a NetworkPolicy named {policy.metadata.name} exists "
                      "and is not this action's for this pod")


def _detached_note(detached: Mapping[str, str] | None) -> str | None:
    if not detached:
        return None
    labels = ", ".join(f"{k}={v}" for k, v in detached.items())
    return (f"the pod stays detached: its ReplicaSet's labels ({labels}) are not put back, "
            "since a replacement runs")
