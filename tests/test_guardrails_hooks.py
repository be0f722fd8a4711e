"""The generic guardrails consult an action only through its hooks, in a fixed order: the
checks about the event first, then the action's own refusal of the pod, then verification,
and its own limits (`clear`) last, with the plan's limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from responder.actions import (
    Action,
    Clearance,
    Guard,
    Limits,
    PodFacts,
    Result,
    Target,
)
from responder.decisions import Decision
from responder.guardrails import Guardrails, Verdict, Verification
from responder.journal import EventStore
from responder.localstate import LocalState

TARGET = Target("shop", "web", "node-a")
VERIFIED = Verification(Verdict.VERIFIED)
POD = PodFacts(exists=True, node="node-a", uid="uid-1", owner_kinds=("ReplicaSet",))


class Recording(Action):
    """An action that says why it refuses, and records what its limit check was given."""

    name = "recording"
    needs = ("namespace", "pod")
    destructive = True

    def __init__(self, refuse: str | None = None, limit: str | None = None):
        self.refuse, self.limit, self.cleared = refuse, limit, []

    def refusal(self, pod: PodFacts, params: Mapping[str, Any]) -> str | None:
        return self.refuse

    def clear(self, guard: Guard, target: Target, pod: PodFacts | None) -> Clearance:
        self.cleared.append(guard.limits)
        return Clearance(guard.trip("recorded", self.limit) if self.limit else None)

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        raise NotImplementedError  # the guardrails never run an action


@pytest.fixture
def guardrails(tmp_path):
    store = EventStore(tmp_path)
    trips: list[str] = []
    yield Guardrails(LocalState(store), own_pod=("falco", "responder-0"),
                     on_trip=trips.append), trips
    store.close()


def decision(**changes) -> Decision:
    return Decision("rule", "recording", changes.pop("params", {}), TARGET,
                    ("namespace", "pod"), False, destructive=True, **changes)


def test_the_actions_own_limit_is_checked_last_with_the_plans_limits(guardrails):
    rails, trips = guardrails
    action, limits = Recording(limit="too many"), Limits(coalesce_seconds=5)
    assert rails.check(action, decision(), TARGET, POD, VERIFIED, limits).reason == "too many"
    assert action.cleared == [limits] and trips == ["recorded"]


@pytest.mark.parametrize(("pod", "verification", "reason"), [
    (POD, Verification(Verdict.CONTRADICTED, "container not in pod"), "container not in pod"),
    (POD, Verification(Verdict.UNVERIFIABLE, "no container.id"), "the action refuses"),
    (PodFacts(exists=True, uid="u"), VERIFIED, "the action refuses"),
])
def test_a_refusal_or_a_contradiction_spends_no_limit(guardrails, pod, verification, reason):
    rails, _ = guardrails
    action = Recording(refuse="the action refuses")
    clearance = rails.check(action, decision(), TARGET, pod, verification, Limits())
    assert clearance.reason.startswith(reason) and action.cleared == []


def test_the_actions_refusal_is_not_asked_about_a_pod_that_is_gone(guardrails):
    rails, _ = guardrails
    action = Recording(refuse="the action refuses")
    clearance = rails.check(action, decision(allow_unverified=True), TARGET,
                            PodFacts(exists=False), Verification(Verdict.NO_POD), Limits())
    assert clearance.reason is None and len(action.cleared) == 1


def test_a_standalone_pod_is_refused_generically_when_the_table_says_so(guardrails):
    rails, _ = guardrails
    action = Recording()
    standalone = PodFacts(exists=True, uid="u")
    assert rails.check(action, decision(), TARGET, standalone, VERIFIED,
                       Limits(skip_standalone_pods=True)).reason.startswith("standalone pod")
    assert rails.check(action, decision(), TARGET, standalone, VERIFIED, Limits()).reason is None
