"""Saving what the cluster knows about a pod, before containment changes or ends it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import AppsV1Api, BatchV1Api

from ..evidence import build_bundle, redact_env, safe_name, to_json
from ..evidencestore import EvidenceStoreError, bundle_key
from .base import (
    Action,
    Incident,
    Outcome,
    Param,
    Rbac,
    Result,
    Target,
    api_failure,
    object_ref,
)
from .pods import POD, READ_POD, read_pod_or_reason

logger = logging.getLogger(__name__)
TAIL_LINES, MAX_BYTES = 1000, 1024 * 1024
MAX_TAIL_LINES, MAX_MAX_BYTES = 100_000, 16 * 1024 * 1024
#: How far up the owner chain to go (Pod -> ReplicaSet -> Deployment is 2; a loop stops here).
MAX_OWNERS = 5
#: The owner kinds followed, by apiVersion and kind: (RBAC resource, API group, reader).
OWNER_KINDS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("apps/v1", "ReplicaSet"): ("replicasets", "apps", "read_namespaced_replica_set"),
    ("apps/v1", "Deployment"): ("deployments", "apps", "read_namespaced_deployment"),
    ("apps/v1", "StatefulSet"): ("statefulsets", "apps", "read_namespaced_stateful_set"),
    ("apps/v1", "DaemonSet"): ("daemonsets", "apps", "read_namespaced_daemon_set"),
    ("batch/v1", "Job"): ("jobs", "batch", "read_namespaced_job"),
    ("batch/v1", "CronJob"): ("cronjobs", "batch", "read_namespaced_cron_job"),
}
#: The Event list is a record, not a stream: a pod with more than this many is cut.
MAX_EVENTS = 500
#: All of a bundle's logs together: it is held in memory until stored, and a pod of many
#: containers (anyone who can create pods can make one) would otherwise take the responder
#: past its memory limit, and with it the containment after the capture.
MAX_LOG_READS, MAX_LOG_BYTES_TOTAL = 64, 64 * 1024 * 1024
#: How many unreadable files a decision's reason names (errors.json has them all).
REASON_NAMES = 5


def _between(low: int, high: int) -> Callable[[int], list[str]]:
    def check(value: int) -> list[str]:
        return [] if low <= value <= high else [f"must be between {low} and {high}"]
    return check


def _owner_rbac() -> tuple[Rbac, ...]:
    by_group: dict[str, list[str]] = {}
    for resource, group, _ in OWNER_KINDS.values():
        by_group.setdefault(group, []).append(resource)
    return tuple(Rbac(resource, ("get",), group, why="read the pod's owner chain up to its "
                      "top controller (owners.json)")
                 for group, resources in by_group.items() for resource in resources)


class CaptureEvidence(Action):
    """Save the pod's manifest, owners, logs, Events and node, and the Falco event, as a bundle.

    The bundle goes to the evidence store with a manifest.json of SHA-256 digests; the
    digest of that manifest is the decision's. Nothing in the cluster changes."""

    name = "capture-evidence"
    needs = ("namespace", "pod")
    acts_on = POD
    params = {
        "tail_lines": Param((int,), check=_between(1, MAX_TAIL_LINES),
                            doc=f"lines of each container log kept, from the end "
                            f"(default {TAIL_LINES})"),
        "max_bytes": Param((int,), check=_between(1, MAX_MAX_BYTES),
                           doc=f"bytes kept of each log, current and previous alike (default "
                           f"{MAX_BYTES}, at most {MAX_MAX_BYTES}); a bundle keeps at most "
                           f"{MAX_LOG_READS} logs and {MAX_LOG_BYTES_TOTAL // 2**20} MiB of "
                           f"logs in all, previous logs cut first"),
        "redact_env": Param((bool,), doc="replace env var values in the pod and owner "
                            "manifests by [redacted] (default true); valueFrom references "
                            "are kept"),
    }
    rbac = (
        READ_POD,
        Rbac("pods/log", ("get",), why="capture-evidence: each container's current and "
             "previous log"),
        Rbac("events", ("list",), why="capture-evidence: the pod's Events (scheduling, "
             "probes, restarts, kills)"),
        Rbac("nodes", ("get",), why="capture-evidence: the conditions of the pod's node"),
        *_owner_rbac(),
    )
    object_survives = True
    destructive = False  # it only reads; a forged event costs a bundle, not a workload
    reversal = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.apps = AppsV1Api(self.api)
        self.batch = BatchV1Api(self.api)

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        return self.capture(target, params, None)

    def attempts(self, target: Target, params: Mapping[str, Any],
                 incident: Incident | None = None) -> Callable[[], Result]:
        return lambda: self.capture(target, params, incident)

    def capture(self, target: Target, params: Mapping[str, Any],
                incident: Incident | None) -> Result:
        """Read everything, build the bundle, store it; the digest goes into the details."""
        store = self.services.evidence
        if store is None:
            return Result(Outcome.FAILED, "no evidence store configured")
        pod = read_pod_or_reason(self, target)
        if isinstance(pod, Result):
            return pod
        errors: dict[str, str] = {}
        files = self._collect(pod, params, incident, errors)
        files["errors.json"] = to_json(errors)
        bundle = build_bundle(files, _about(target, pod, incident, params))
        key = bundle_key(incident.uuid if incident else "no-event", target.namespace,
                         target.pod)
        involved = object_ref(pod, POD)
        try:
            location = store.put(key, bundle.files)
        except EvidenceStoreError as exc:
            logger.warning("evidence of pod %s/%s not stored: %s", target.namespace,
                           target.pod, exc)
            return Result(Outcome.FAILED, str(exc), involved=involved)
        details = {"digest": bundle.digest, "location": location, "key": key,
                   "files": len(bundle.files), "bytes": bundle.total_bytes}
        reason = _partial(errors) if errors else None
        return Result(Outcome.DONE, reason, involved=involved,
                      details={**details, "unreadable": sorted(errors)} if errors else details)

    def _collect(self, pod: Any, params: Mapping[str, Any], incident: Incident | None,
                 errors: dict[str, str]) -> dict[str, bytes]:
        redact = params.get("redact_env", True)
        manifest = self.api.sanitize_for_serialization(pod)
        files = {
            "event.json": to_json(dict(incident.event) if incident else None),
            "decisions.json": to_json(list(incident.earlier) if incident else []),
            "pod.json": to_json(redact_env(manifest) if redact else manifest),
            "owners.json": to_json(self._owners(manifest, redact, errors)),
            "events.json": to_json(self._events(pod, errors)),
            "node.json": to_json(self._node(pod.spec.node_name, errors)),
        }
        files.update(self._logs(manifest, params, errors))
        return files

    def _owners(self, manifest: Mapping[str, Any], redact: bool,
                errors: dict[str, str]) -> list[dict[str, Any]]:
        """The controller chain from the pod's owner up: each reference and the object."""
        chain: list[dict[str, Any]] = []
        namespace = manifest["metadata"]["namespace"]
        ref = _controller(manifest)
        while ref is not None and len(chain) < MAX_OWNERS:
            entry = {k: ref.get(k) for k in ("apiVersion", "kind", "name", "uid")}
            chain.append(entry)
            known = OWNER_KINDS.get((ref.get("apiVersion"), ref.get("kind")))
            if known is None:
                entry["note"] = "kind not followed by capture-evidence"
                break
            found = self._read_owner(known, ref["name"], namespace)
            if isinstance(found, str):
                entry["error"] = errors[f"owners.json: {ref['kind']} {ref['name']}"] = found
                break
            obj = self.api.sanitize_for_serialization(found)
            if obj["metadata"].get("uid") != ref.get("uid"):
                entry["note"] = "the object of this name has another uid (replaced)"
                break
            entry["object"] = redact_env(obj) if redact else obj
            ref = _controller(obj)
        return chain

    def _read_owner(self, known: tuple[str, str, str], name: str, namespace: str) -> Any:
        _, group, reader = known
        api = self.batch if group == "batch" else self.apps
        try:
            return getattr(api, reader)(name, namespace, _request_timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - recorded in the bundle, the rest goes on
            return api_failure(exc)

    def _events(self, pod: Any, errors: dict[str, str]) -> list[Any] | None:
        try:
            found = self.core.list_namespaced_event(
                pod.metadata.namespace, field_selector=f"involvedObject.uid={pod.metadata.uid}",
                limit=MAX_EVENTS, _request_timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - recorded in the bundle, the rest goes on
            errors["events.json"] = api_failure(exc)
            return None
        return self.api.sanitize_for_serialization(found.items)

    def _node(self, name: str | None, errors: dict[str, str]) -> dict[str, Any] | None:
        if not name:
            errors["node.json"] = "the pod is not scheduled on a node"
            return None
        try:
            node = self.api.sanitize_for_serialization(
                self.core.read_node(name, _request_timeout=self.timeout))
        except Exception as exc:  # noqa: BLE001 - recorded in the bundle, the rest goes on
            errors["node.json"] = api_failure(exc)
            return None
        spec, status = node.get("spec", {}), node.get("status", {})
        return {"name": name, "uid": node["metadata"].get("uid"),
                "unschedulable": spec.get("unschedulable", False),
                "taints": spec.get("taints", []), "conditions": status.get("conditions", []),
                "nodeInfo": status.get("nodeInfo")}

    def _logs(self, manifest: Mapping[str, Any], params: Mapping[str, Any],
              errors: dict[str, str]) -> dict[str, bytes]:
        """Each container's log (init and ephemeral ones too: an attacker's debug container
        is one), then the previous one of each that restarted; all together within
        MAX_LOG_READS reads and MAX_LOG_BYTES_TOTAL bytes."""
        files: dict[str, bytes] = {}
        budget, max_bytes = MAX_LOG_BYTES_TOTAL, params.get("max_bytes", MAX_BYTES)
        for i, (file, name, previous) in enumerate(_log_reads(manifest)):
            if i >= MAX_LOG_READS or budget <= 0:
                errors[file] = f"not read: a bundle keeps at most {MAX_LOG_READS} logs " \
                    f"and {MAX_LOG_BYTES_TOTAL} bytes of logs"
                continue
            data = self._log(manifest["metadata"], name, previous,
                             {**params, "max_bytes": min(max_bytes, budget)})
            if isinstance(data, str):
                errors[file] = data
            else:
                files[file] = data
                budget -= len(data)
        return files

    def _log(self, meta: Mapping[str, Any], container: str, previous: bool,
             params: Mapping[str, Any]) -> bytes | str:
        max_bytes = params.get("max_bytes", MAX_BYTES)
        try:
            answer = self.core.read_namespaced_pod_log(
                meta["name"], meta["namespace"], container=container, previous=previous,
                tail_lines=params.get("tail_lines", TAIL_LINES), limit_bytes=max_bytes,
                timestamps=True, _preload_content=False, _request_timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - no kubelet, no log: the rest goes on
            return api_failure(exc)
        try:
            return answer.data[:max_bytes]
        finally:
            answer.release_conn()


def _log_reads(manifest: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(file, container, previous) of each log to read: every container's current log,
    then the previous log of those that restarted (the budget cuts previous ones first)."""
    spec, status = manifest.get("spec", {}), manifest.get("status", {})
    restarted = {s["name"] for key in ("initContainerStatuses", "containerStatuses",
                                       "ephemeralContainerStatuses")
                 for s in status.get(key) or []
                 if s.get("restartCount") or (s.get("lastState") or {}).get("terminated")}
    names = [c["name"] for key in ("initContainers", "containers", "ephemeralContainers")
             for c in spec.get(key) or []]
    return [(f"logs/{safe_name(n)}.log", n, False) for n in names] + \
        [(f"logs/{safe_name(n)}.previous.log", n, True) for n in names if n in restarted]


def _partial(errors: Mapping[str, str]) -> str:
    names = sorted(errors)
    more = f" and {len(names) - REASON_NAMES} more" if len(names) > REASON_NAMES else ""
    return f"partial bundle: {', '.join(names[:REASON_NAMES])}{more} unreadable (errors.json)"


def _controller(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


def _about(target: Target, pod: Any, incident: Incident | None,
           params: Mapping[str, Any]) -> dict[str, Any]:
    """What manifest.json says of the capture besides its files."""
    return {
        "captured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "event_uuid": incident.uuid if incident else None,
        "table_rule": incident.table_rule if incident else None,
        "namespace": target.namespace, "pod": target.pod, "pod_uid": pod.metadata.uid,
        "node": pod.spec.node_name,
        "params": {"tail_lines": params.get("tail_lines", TAIL_LINES),
                   "max_bytes": params.get("max_bytes", MAX_BYTES),
                   "redact_env": params.get("redact_env", True)},
    }
