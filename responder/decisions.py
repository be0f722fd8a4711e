"""From an event and a table to a plan of actions: pure, no I/O, so every choice is explainable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .actions import Kind, Limits, Registry, Target
from .events import Event
from .table import Table, match_rules

# Where each target part comes from, in order of preference, for the reasons we give.
POD_FIELDS = "k8s.pod.name, ka.target.name or ka.resp.name"
NAMESPACE_FIELDS = "k8s.ns.name or ka.target.namespace"


@dataclass(frozen=True)
class Decision:
    """One action a matched table rule asks for, with what it would act on."""

    table_rule: str
    action: str
    params: Mapping[str, Any]
    target: Target
    needs: tuple[str, ...]
    dry_run: bool
    skip_reason: str | None = None
    #: The action's class says so (Action.destructive); copied here like `needs`.
    destructive: bool = False
    #: The table rule lets this destructive action act on an event it cannot verify.
    allow_unverified: bool = False
    #: The kind of object the action acts on (Action.acts_on), for its audit Event.
    acts_on: Kind | None = None
    #: The table says `on_failure: stop`: if this fails, the rule's later actions are skipped.
    stop_on_failure: bool = False

    @property
    def target_keys(self) -> tuple[str, ...]:
        """The target parts worth showing: the node only for node actions."""
        return ("namespace", "pod", "node") if "node" in self.needs else ("namespace", "pod")


@dataclass(frozen=True)
class Plan:
    event: Event
    matched: tuple[str, ...]
    decisions: tuple[Decision, ...]
    #: The limits of the table the plan was made from: a reload never mixes two tables'.
    limits: Limits = Limits()


def resolve_target(event: Event) -> Target:
    """The namespace, pod and node an event points at; unknown parts are None."""
    if event.source == "k8s_audit":
        namespace, pod = event.field("ka.target.namespace"), _audit_pod(event)
        # An audit event's hostname is the Falco pod that received it, not the pod's node.
        node = None
    else:
        namespace, pod = event.field("k8s.ns.name"), event.field("k8s.pod.name")
        node = event.hostname or None
    container = event.field("container.id")
    if container == "host":
        # A host process: there is no pod to act on, whatever stale k8s fields say.
        namespace = pod = None
    return Target(_text(namespace), _text(pod), node, _text(container))


def _audit_pod(event: Event) -> Any:
    resource = event.field("ka.target.resource")
    if resource not in (None, "pods"):
        # e.g. "Disallowed K8s User" on a rolebinding: ka.target.name is not a pod.
        return None
    if resource == "pods" and event.field("ka.target.name"):
        return event.field("ka.target.name")
    # "Create Privileged Pod" and friends name the created pod in the response.
    return event.field("ka.resp.name")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def plan_response(table: Table, registry: Registry, event: Event,
                  own_namespace: str | None = None, force_dry_run: bool = False) -> Plan:
    """Decide what to do about one event. Pure: no cluster access, same input, same plan."""
    target = resolve_target(event)
    protected = table.protected_namespaces | ({own_namespace} if own_namespace else set())
    rules = match_rules(table, event)
    decisions = []
    for rule in rules:
        dry_run = force_dry_run or table.is_dry_run(rule)
        for spec in rule.actions:
            action = registry.get(spec.action)
            reason = skip_reason(target, action.needs, protected)
            decisions.append(Decision(rule.name, spec.action, spec.params, target, action.needs,
                                      dry_run, reason, action.destructive,
                                      rule.allow_unverified, action.acts_on,
                                      stop_on_failure=spec.on_failure == "stop"))
    return Plan(event, tuple(r.name for r in rules), tuple(decisions), table.limits)


def skip_reason(target: Target, needs: tuple[str, ...], protected: set[str] | frozenset[str]
                ) -> str | None:
    """Why an action needing `needs` cannot run on `target`, or None when it can."""
    if target.namespace in protected:
        return f"namespace {target.namespace} is protected"
    if "pod" in needs and target.container_id == "host":
        return "event comes from a host process, not a pod"
    if "pod" in needs and not target.pod:
        return f"event names no pod ({POD_FIELDS} missing)"
    if "namespace" in needs and not target.namespace:
        return f"event names no namespace ({NAMESPACE_FIELDS} missing)"
    if "node" in needs and not (target.node or target.pod):
        return "event names no node (no pod to look up and no hostname)"
    return None
