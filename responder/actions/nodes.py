"""Actions on the node an event happened on."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..shared import acquire
from .base import (
    Action,
    Clearance,
    Guard,
    Incident,
    Kind,
    Limit,
    Outcome,
    PodFacts,
    Rbac,
    Result,
    Target,
    object_ref,
)
from .pods import FIELD_MANAGER, MERGE_PATCH, READ_POD

logger = logging.getLogger(__name__)
NODE = Kind("Node", "v1", name_from="node", namespaced=False)
#: The shared lock every replica holds from counting the nodes to the cordon's answer.
CORDON_LOCK = "cordon-node"
#: The lock outlives the slowest cordon (its retries included) by this many request timeouts;
#: a replica that died holding it blocks cordons no longer.
LOCK_TIMEOUTS = 10


class CordonNode(Action):
    """Mark the node unschedulable, as `kubectl cordon` does; running pods stay."""

    name = "cordon-node"
    needs = ("node",)
    acts_on = NODE
    rbac = (
        Rbac("nodes", ("get",), why="see whether the node is already unschedulable"),
        Rbac("nodes", ("list",), why="count cordoned and schedulable nodes before cordoning "
             "another (max_cordoned_nodes, never the last schedulable node)"),
        Rbac("nodes", ("patch",), why="set spec.unschedulable, as `kubectl cordon` does "
             "(undo: `kubectl uncordon`)"),
        READ_POD,  # the node is the event's pod's, when the event names a pod
    )
    limits = (Limit("max_cordoned_nodes", 1,
                    doc="cordoning stops once this many nodes are unschedulable, across "
                    "replicas (existing cordons count); the last schedulable node is never "
                    "cordoned"),)
    destructive = True  # the node takes no new pods until someone uncordons it
    reversal = "uncordon the node, only if it was schedulable before and is still cordoned " \
        "by the responder (not cordoned again by someone since)"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def exclusive(self) -> contextlib.AbstractContextManager:
        # The threads of one process queue here, rather than all asking the shared lock.
        return self._lock

    def clear(self, guard: Guard, target: Target, pod: PodFacts | None) -> Clearance:
        """Count and cordon under a lock every replica shares (Redis; SQLite for one
        replica's processes): two replicas must not both see room for "one more" cordon,
        nor both leave the last schedulable node. The node list read under the lock sees
        the cordon of the lock's previous holder (a list is read from etcd, not a cache)."""
        token = acquire(guard.shared, CORDON_LOCK, LOCK_TIMEOUTS * self.timeout,
                        wait=self.timeout)
        try:
            reason = self._cordon_limit(guard, target.node)
        except BaseException:
            self._unlock(guard, token)
            raise
        if reason:
            self._unlock(guard, token)
            return Clearance(reason)
        return Clearance(settle=lambda result: self._unlock(guard, token))

    def _unlock(self, guard: Guard, token: str) -> None:
        try:
            held = guard.shared.unlock(CORDON_LOCK, token)
        except Exception as exc:  # noqa: BLE001 - e.g. Redis down: the lock just expires
            logger.warning("cannot release the cordon lock (%s)", type(exc).__name__)
            return
        if not held:
            logger.warning("the cordon lock expired before the cordon finished: another "
                           "replica may have counted the nodes meanwhile")

    def _cordon_limit(self, guard: Guard, node_name: str | None) -> str | None:
        nodes = self.core.list_node(_request_timeout=self.timeout).items
        cordoned = {n.metadata.name for n in nodes if n.spec and n.spec.unschedulable}
        if node_name in cordoned:
            return None  # the action reports "already cordoned"
        limit = guard.limits.value(self.limits[0])
        if len(cordoned) >= limit:
            return guard.trip("cordoned-nodes",
                              f"cordon limit reached ({len(cordoned)} of at most {limit} "
                              "nodes already cordoned)")
        schedulable = [n for n in nodes if n.metadata.name not in cordoned]
        if len(schedulable) <= 1:
            return guard.trip("last-node", "would cordon the last schedulable node")
        return None

    def attempts(self, target: Target, params: Mapping[str, Any],
                 incident: Incident | None = None) -> Callable[[], Result]:
        # Whether the node was cordoned before the first try: a retry after a lost answer
        # finds it cordoned by us, and undo must know it was schedulable before.
        before: list[bool] = []
        return lambda: self._cordon(target, before)

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        return self._cordon(target, [])

    def _cordon(self, target: Target, before: list[bool]) -> Result:
        node = self.core.read_node(target.node, _request_timeout=self.timeout)
        cordoned = bool(node.spec is not None and node.spec.unschedulable)
        if not before:
            before.append(cordoned)
        details = {"was_unschedulable": before[0], "node_uid": node.metadata.uid,
                   "field_manager": FIELD_MANAGER}
        if cordoned:
            outcome, reason = (Outcome.ALREADY_DONE, "already cordoned") if before[0] \
                else (Outcome.DONE, None)  # by our earlier try, whose answer was lost
            return Result(outcome, reason, object_ref(node, NODE), details=details)
        node = self._patch(target, {"spec": {"unschedulable": True}})
        return Result(Outcome.DONE, involved=object_ref(node, NODE), details=details)

    def undo(self, target: Target, details: Mapping[str, Any]) -> Result:
        """Uncordon only a node that was schedulable before and is still cordoned: a cordon
        someone else set (before the response, or again since) is theirs to lift."""
        if details.get("was_unschedulable", True):
            return Result(Outcome.SKIPPED, "the node was already cordoned before the response; "
                          "left cordoned")
        try:
            node = self.core.read_node(target.node, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:
                return Result(Outcome.SKIPPED, "node no longer exists")
            raise
        if details.get("node_uid") and node.metadata.uid != details["node_uid"]:
            return Result(Outcome.SKIPPED, "node was replaced since (uid changed); left alone")
        if not (node.spec is not None and node.spec.unschedulable):
            return Result(Outcome.ALREADY_DONE, "already undone (the node is schedulable)",
                          object_ref(node, NODE))
        others = cordon_owners(node) - {details.get("field_manager")}
        if details.get("field_manager") and others:
            # Uncordoned and cordoned again since (kubectl, for maintenance): theirs now.
            return Result(Outcome.SKIPPED, f"cordoned again since by {', '.join(sorted(others))}"
                          "; left cordoned", object_ref(node, NODE))
        # With the version read: a change meanwhile is a 409, and the retry reads again.
        node = self._patch(target, {"metadata": {"uid": node.metadata.uid, "resourceVersion":
                                                 node.metadata.resource_version},
                                    "spec": {"unschedulable": False}})
        return Result(Outcome.DONE, involved=object_ref(node, NODE))

    def _patch(self, target: Target, patch: dict[str, Any]) -> Any:
        return self.core.patch_node(target.node, patch, _content_type=MERGE_PATCH,
                                    field_manager=FIELD_MANAGER, _request_timeout=self.timeout)


def cordon_owners(node: Any) -> set[str]:
    """The field managers the API server names as owning spec.unschedulable: whoever last
    changed it (an update that changes nothing owns nothing). Empty when the server keeps
    no managedFields."""
    owners = set()
    for entry in node.metadata.managed_fields or []:
        spec = (entry.fields_v1 or {}).get("f:spec") or {}
        if "f:unschedulable" in spec and entry.manager:
            owners.add(entry.manager)
    return owners
