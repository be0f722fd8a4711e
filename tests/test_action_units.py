"""An action is one unit: everything about it is in its own module, the rest of the responder
knows it only through its declarations, and what it declares reversible it can undo."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from kubernetes.client import V1NetworkPolicy, V1ObjectMeta, V1Pod

from responder.actions import Action, Outcome, Target, default_registry, object_ref
from responder.actions.pods import POD

RESPONDER = Path(__file__).resolve().parent.parent / "responder"
REGISTRATION = RESPONDER / "actions" / "__init__.py"


def words_of(action) -> re.Pattern:
    """The action's table name and class name, as whole words."""
    return re.compile(rf"(?<![\w-])({re.escape(action.name)}|{action.__name__})(?![\w-])")


@pytest.mark.parametrize("action", list(default_registry()), ids=lambda a: a.name)
def test_no_action_is_named_outside_its_own_module_and_its_registration(action):
    own = Path(inspect.getsourcefile(action)).resolve()
    mentions = [f"{path.relative_to(RESPONDER)}:{number}: {line.strip()}"
                for path in sorted(RESPONDER.rglob("*.py")) if path not in (own, REGISTRATION)
                for number, line in enumerate(path.read_text("utf-8").splitlines(), 1)
                if words_of(action).search(line)]
    assert mentions == []


def test_every_action_declares_its_object_rbac_reasons_and_reversal():
    for action in default_registry():
        assert action.acts_on is not None, action.name
        assert action.rbac and all(rule.why for rule in action.rbac), action.name
        can_undo = action.undo is not Action.undo
        assert can_undo == (action.reversal is not None), action.name


def test_label_pod_undo_removes_only_the_labels_it_set(kube, registry):
    kube.api.add_pod("shop", "web", labels={"app": "web"})
    with kube.api_client() as api:
        label = registry.instantiate(api, 5)["label-pod"]
        target, params = Target("shop", "web"), {"labels": {"quarantine": "true"}}
        done = label.run(target, params)
        assert done.outcome is Outcome.DONE
        assert kube.api.pods[("shop", "web")]["metadata"]["labels"] == {
            "app": "web", "quarantine": "true"}
        undone = label.undo(target, done.details)
    assert undone.outcome is Outcome.DONE and undone.involved.kind == "Pod"
    assert kube.api.pods[("shop", "web")]["metadata"]["labels"] == {"app": "web"}


def test_cordon_node_undo_uncordons(kube, registry):
    kube.api.add_node("node-a")
    with kube.api_client() as api:
        cordon = registry.instantiate(api, 5)["cordon-node"]
        done = cordon.run(Target(node="node-a"), {})
        assert done.outcome is Outcome.DONE
        assert kube.api.nodes["node-a"]["spec"]["unschedulable"] is True
        assert cordon.undo(Target(node="node-a"), done.details).outcome is Outcome.DONE
    assert kube.api.nodes["node-a"]["spec"]["unschedulable"] is False


def test_delete_pod_says_it_cannot_be_undone(kube, registry):
    with kube.api_client() as api:
        delete = registry.instantiate(api, 5)["delete-pod"]
    assert delete.reversal is None
    with pytest.raises(NotImplementedError, match="cannot be undone"):
        delete.undo(Target("shop", "web"), {})


def test_audit_references_take_the_objects_own_api_version_and_kind():
    policy = V1NetworkPolicy(api_version="networking.k8s.io/v1", kind="NetworkPolicy",
                             metadata=V1ObjectMeta(name="isolate", namespace="shop", uid="u-1"))
    ref = object_ref(policy)
    assert (ref.api_version, ref.kind, ref.namespace, ref.uid) == (
        "networking.k8s.io/v1", "NetworkPolicy", "shop", "u-1")
    # Where the answer left them out, the action's declared kind says them.
    bare = object_ref(V1Pod(metadata=V1ObjectMeta(name="web", namespace="shop")), POD)
    assert (bare.api_version, bare.kind) == ("v1", "Pod")
