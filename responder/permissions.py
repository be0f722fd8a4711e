"""Every Kubernetes permission the responder needs: what its actions declare (Action.rbac)
and its own needs beside them, declared here and nowhere else. manifests/rbac.yaml grants
exactly these (tests/test_manifests.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .actions import Rbac, Registry

#: What the responder needs whatever its actions are.
OWN_RBAC = (
    Rbac("events", ("create",), why="record every action taken as a Kubernetes Event on the "
         "object it touched, so `kubectl describe` shows who changed it and why"),
    Rbac("events", ("list",), why="the console's alert page lists the audit Events recorded "
         "for that alert (reason FalcoResponse, on the objects it acted on)"),
)


@dataclass(frozen=True)
class Grant:
    """One (apiGroup, resource, verb) the responder needs, and who needs it for what."""

    api_group: str
    resource: str
    verb: str
    #: (action name, or "responder" for its own needs; why)
    reasons: tuple[tuple[str, str], ...]


def required_grants(registry: Registry) -> list[Grant]:
    """Every permission needed, once each, with every reason for it; in declaration order."""
    reasons: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    needs = [(action.name, rule) for action in registry for rule in action.rbac]
    needs += [("responder", rule) for rule in OWN_RBAC]
    for who, rule in needs:
        for verb in rule.verbs:
            said = reasons.setdefault((rule.api_group, rule.resource, verb), [])
            if (who, rule.why) not in said:
                said.append((who, rule.why))
    return [Grant(group, resource, verb, tuple(why))
            for (group, resource, verb), why in reasons.items()]


def required_permissions(registry: Registry) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples, as a ClusterRole's rules grant them."""
    return {(g.api_group, g.resource, g.verb) for g in required_grants(registry)}
