"""Adding an action is one module and one registration line: an action on another API group
(a NetworkPolicy), given only its declarations, runs through the webhook behind the generic
guardrails against a real kube-apiserver, and its audit Event names the object with its own
apiVersion and kind."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from responder.actions import (
    BUILTIN_ACTIONS,
    Action,
    Kind,
    Outcome,
    Rbac,
    Registry,
    Result,
    Target,
    object_ref,
)

from .netcat import FULL_CID, netcat_event

pytestmark = pytest.mark.slow

POLICY = Kind("NetworkPolicy", "networking.k8s.io/v1", name_from="pod", namespaced=True)
TABLE = """
defaults: {dry_run: false}
rules:
  - name: fence
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: fence-pod
"""


class FencePod(Action):
    """Deny all traffic to and from the pod with a NetworkPolicy of its own (a stand-in
    beside the built-in isolate-pod, named apart so it shadows nothing)."""

    name = "fence-pod"
    needs = ("namespace", "pod")
    acts_on = POLICY
    rbac = (Rbac("networkpolicies", ("create", "delete"), "networking.k8s.io",
                 why="create the deny-all policy; delete it to undo"),)
    reversal = "delete the NetworkPolicy"

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        body = {"metadata": {"name": f"fence-{target.pod}"},
                "spec": {"podSelector": {"matchLabels": {"app": target.pod}},
                         "policyTypes": ["Ingress", "Egress"]}}
        try:
            policy = client.NetworkingV1Api(self.api).create_namespaced_network_policy(
                target.namespace, body, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 409:
                return Result(Outcome.ALREADY_DONE, "already isolated")
            raise
        return Result(Outcome.DONE, involved=object_ref(policy, POLICY))


@pytest.fixture
def registry():
    """The built-in actions and the new one: its one registration line."""
    return Registry([*BUILTIN_ACTIONS, FencePod])


@pytest.fixture
def post(cluster, apiserver, make_app, make_table):
    node = cluster.add_node("node-a").metadata.name
    cluster.add_node("node-b")
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    app = make_app(make_table(TABLE), api_client=apiserver.api_client(), intake="inline")

    def send(event: dict) -> list[tuple[str, str, str | None]]:
        reply = app.test_client().post("/", data=json.dumps(event),
                                       content_type="application/json")
        assert reply.status_code == 200, reply.get_json()
        return [(d["action"], d["outcome"], d.get("reason"))
                for d in reply.get_json()["decisions"]]
    return send


def test_a_new_action_on_another_api_group_acts_and_is_audited_as_its_own_kind(cluster, post):
    assert post(netcat_event(namespace=cluster.namespace)) == [("fence-pod", "done", None)]
    policy = client.NetworkingV1Api(cluster.core.api_client).read_namespaced_network_policy(
        "fence-web", cluster.namespace)
    (recorded,) = [e for e in cluster.events() if e.involved_object.name == "fence-web"]
    involved = recorded.involved_object
    assert (involved.api_version, involved.kind, involved.uid) == (
        "networking.k8s.io/v1", "NetworkPolicy", policy.metadata.uid)
    assert post(netcat_event("u-2", namespace=cluster.namespace)) == [
        ("fence-pod", "coalesced", "same table rule and target already handled 1 time(s) "
         "within the last 30 s")]


def test_the_generic_guardrails_hold_a_new_action_back_from_a_forged_event(cluster, post):
    event = netcat_event(namespace=cluster.namespace)
    event["output_fields"]["container.id"] = "fedcba987654"  # not one of the pod's
    assert post(event) == [("fence-pod", "skipped", "container not in pod (container.id "
                            "fedcba987654 is not one of its own)")]
    with pytest.raises(ApiException) as info:
        client.NetworkingV1Api(cluster.core.api_client).read_namespaced_network_policy(
            "fence-web", cluster.namespace)
    assert info.value.status == 404
