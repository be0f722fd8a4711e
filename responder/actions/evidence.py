"""Saving what the cluster knows about a pod, before containment changes or ends it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
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
from .pods import POD, READ_POD, known_pod, read_pod_or_reason

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
#: How long the reads after the pod's may take in all, in seconds: containment waits for
#: them. Against the loopback API server they take tens of milliseconds; a kubelet that
#: hangs (a compromised or overloaded node) must not keep a live shell connected longer.
TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS = 5, 60
#: Reads at once per capture (owner chain, Events, node, logs share the action's ApiClient,
#: whose urllib3 pool keeps 5 connections per core: 4 leave room for the other callers).
READERS = 4
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
        "timeout_seconds": Param((int,), check=_between(1, MAX_TIMEOUT_SECONDS),
                                 doc=f"how long the reads after the pod's (owners, Events, "
                                 f"node, logs; made {READERS} at a time) may take in all before "
                                 f"the bundle is stored with what was read, errors.json naming "
                                 f"the rest, and containment goes on (default "
                                 f"{TIMEOUT_SECONDS})"),
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
    read_only = True
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
        pod = known_pod(incident, target) or read_pod_or_reason(
            self, target, params.get("timeout_seconds", TIMEOUT_SECONDS))
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
        deadline = Deadline(params.get("timeout_seconds", TIMEOUT_SECONDS), self.timeout)
        chain: list[dict[str, Any]] = []  # grows entry by entry: a timeout keeps what was read
        reads: dict[str, Callable[[], Read]] = {
            "owners.json": lambda: self._owners(manifest, redact, chain, deadline),
            "events.json": lambda: self._events(pod, deadline),
            "node.json": lambda: self._node(pod.spec.node_name, deadline),
            **self._log_reads(manifest, params, deadline, errors),
        }
        found = read_all(reads, deadline, errors)
        files = {
            "event.json": to_json(dict(incident.event) if incident else None),
            "decisions.json": to_json(list(incident.earlier) if incident else []),
            "pod.json": to_json(redact_env(manifest) if redact else manifest),
            "owners.json": to_json(found.get("owners.json", list(chain))),
            "events.json": to_json(found.get("events.json")),
            "node.json": to_json(found.get("node.json")),
        }
        files.update({name: data for name, data in found.items()
                      if name.startswith("logs/") and data is not None})
        return files

    def _owners(self, manifest: Mapping[str, Any], redact: bool, chain: list[dict[str, Any]],
                deadline: Deadline) -> Read:
        """The controller chain from the pod's owner up: each reference and the object,
        appended to `chain` whole, one at a time."""
        namespace = manifest["metadata"]["namespace"]
        ref, errors = _controller(manifest), {}
        while ref is not None and len(chain) < MAX_OWNERS:
            entry = {k: ref.get(k) for k in ("apiVersion", "kind", "name", "uid")}
            known = OWNER_KINDS.get((ref.get("apiVersion"), ref.get("kind")))
            found = "" if known is None else self._read_owner(known, ref["name"], namespace,
                                                              deadline)
            ref = None
            if known is None:
                entry["note"] = "kind not followed by capture-evidence"
            elif isinstance(found, str):
                entry["error"] = errors[f"owners.json: {entry['kind']} {entry['name']}"] = found
            elif (obj := self.api.sanitize_for_serialization(found))["metadata"].get(
                    "uid") != entry["uid"]:
                entry["note"] = "the object of this name has another uid (replaced)"
            else:
                entry["object"] = redact_env(obj) if redact else obj
                ref = _controller(obj)
            chain.append(entry)
        return list(chain), errors

    def _read_owner(self, known: tuple[str, str, str], name: str, namespace: str,
                    deadline: Deadline) -> Any:
        _, group, reader = known
        api = self.batch if group == "batch" else self.apps
        try:
            return getattr(api, reader)(name, namespace, _request_timeout=deadline.request())
        except Exception as exc:  # noqa: BLE001 - recorded in the bundle, the rest goes on
            return api_failure(exc)

    def _events(self, pod: Any, deadline: Deadline) -> Read:
        try:
            found = self.core.list_namespaced_event(
                pod.metadata.namespace, field_selector=f"involvedObject.uid={pod.metadata.uid}",
                limit=MAX_EVENTS, _request_timeout=deadline.request())
        except Exception as exc:  # noqa: BLE001 - recorded in the bundle, the rest goes on
            return None, {"events.json": api_failure(exc)}
        return self.api.sanitize_for_serialization(found.items), {}

    def _node(self, name: str | None, deadline: Deadline) -> Read:
        if not name:
            return None, {"node.json": "the pod is not scheduled on a node"}
        try:
            node = self.api.sanitize_for_serialization(
                self.core.read_node(name, _request_timeout=deadline.request()))
        except Exception as exc:  # noqa: BLE001 - recorded in the bundle, the rest goes on
            return None, {"node.json": api_failure(exc)}
        spec, status = node.get("spec", {}), node.get("status", {})
        return {"name": name, "uid": node["metadata"].get("uid"),
                "unschedulable": spec.get("unschedulable", False),
                "taints": spec.get("taints", []), "conditions": status.get("conditions", []),
                "nodeInfo": status.get("nodeInfo")}, {}

    def _log_reads(self, manifest: Mapping[str, Any], params: Mapping[str, Any],
                   deadline: Deadline, errors: dict[str, str]) -> dict[str, Callable[[], Read]]:
        """A read for each log, by file name, each allotted its bytes in turn out of
        MAX_LOG_BYTES_TOTAL (allotted before the reads run side by side, so which logs a
        crowded pod keeps does not depend on which answers first); the logs past
        MAX_LOG_READS or the byte budget are named in `errors`."""
        reads, budget = {}, MAX_LOG_BYTES_TOTAL
        max_bytes = params.get("max_bytes", MAX_BYTES)
        for i, (file, name, previous) in enumerate(_log_files(manifest)):
            if i >= MAX_LOG_READS or budget <= 0:
                errors[file] = (f"not read: a bundle keeps at most {MAX_LOG_READS} logs "
                                f"and {MAX_LOG_BYTES_TOTAL} bytes of logs")
                continue
            allotted = min(max_bytes, budget)
            budget -= allotted
            reads[file] = _bind(self._log, file, manifest["metadata"], name, previous,
                                {**params, "max_bytes": allotted}, deadline)
        return reads

    def _log(self, file: str, meta: Mapping[str, Any], container: str, previous: bool,
             params: Mapping[str, Any], deadline: Deadline) -> Read:
        max_bytes = params.get("max_bytes", MAX_BYTES)
        try:
            answer = self.core.read_namespaced_pod_log(
                meta["name"], meta["namespace"], container=container, previous=previous,
                tail_lines=params.get("tail_lines", TAIL_LINES), limit_bytes=max_bytes,
                timestamps=True, _preload_content=False, _request_timeout=deadline.request())
        except Exception as exc:  # noqa: BLE001 - no kubelet, no log: the rest goes on
            return None, {file: api_failure(exc)}
        try:
            return answer.data[:max_bytes], {}
        finally:
            answer.release_conn()


#: What one read of a capture gives: its value (None when unreadable), and the errors.json
#: entries it adds.
Read = tuple[Any, dict[str, str]]


class Deadline:
    """The time a capture's reads must be done by; each request's timeout ends with it."""

    def __init__(self, seconds: float, request_timeout: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.request_timeout = request_timeout

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def request(self) -> float:
        # At least a little: a read started just before the deadline fails on its own
        # timeout instead of waiting for urllib3's default (none).
        return max(0.05, min(self.request_timeout, self.left()))


def read_all(reads: Mapping[str, Callable[[], Read]], deadline: Deadline,
             errors: dict[str, str]) -> dict[str, Any]:
    """Run the reads READERS at a time until they are done or the deadline passes; the
    values read, by name, and into `errors` what each said and which were not done in time.
    Reads still running are left to end on their request timeouts: nothing waits for them,
    and what they find later is not used."""
    pool = ThreadPoolExecutor(min(READERS, len(reads)) or 1,
                              thread_name_prefix="capture-evidence")
    try:
        futures: dict[Future, str] = {pool.submit(read): name for name, read in reads.items()}
        done, late = wait(futures, timeout=deadline.left())
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    found = {}
    for future in done:
        try:
            value, said = future.result()
        except Exception as exc:  # noqa: BLE001 - one read's bug must not lose the others
            value, said = None, {futures[future]: f"{type(exc).__name__}: {exc}"}
        found[futures[future]] = value
        errors.update(said)
    for future in late:
        errors[futures[future]] = (f"not read within the capture's {deadline.seconds:g} s "
                                   "(timeout_seconds); containment went on")
    if late:
        logger.warning("capture-evidence: %s not read within %g s", ", ".join(
            sorted(futures[f] for f in late)), deadline.seconds)
    return found


def _log_files(manifest: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(file, container, previous) of each log to read: every container's current log (init
    and ephemeral ones too: an attacker's debug container is one), then the previous log of
    those that restarted (the budget cuts previous ones first)."""
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


def _bind(function: Callable[..., Read], *args: Any) -> Callable[[], Read]:
    return lambda: function(*args)


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
