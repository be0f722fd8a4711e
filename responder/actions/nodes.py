"""Actions on the node an event happened on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Action, Outcome, Rbac, Result, Target, object_ref
from .pods import MERGE_PATCH


class CordonNode(Action):
    """Mark the node unschedulable, as `kubectl cordon` does; running pods stay."""

    name = "cordon-node"
    needs = ("node",)
    # list: the guardrails count cordoned and schedulable nodes before cordoning another;
    # pods get: the node is read from the event's pod, when it names one.
    rbac = (Rbac("nodes", ("get", "list", "patch")), Rbac("pods", ("get",)))
    destructive = True  # the node takes no new pods until someone uncordons it

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        node = self.core.read_node(target.node, _request_timeout=self.timeout)
        if node.spec is not None and node.spec.unschedulable:
            return Result(Outcome.ALREADY_DONE, "already cordoned", object_ref(node))
        node = self.core.patch_node(target.node, {"spec": {"unschedulable": True}},
                                    _content_type=MERGE_PATCH, _request_timeout=self.timeout)
        return Result(Outcome.DONE, involved=object_ref(node))
