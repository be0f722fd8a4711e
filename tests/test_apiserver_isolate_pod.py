"""isolate-pod against a real kube-apiserver: the stored NetworkPolicy selects exactly the
event's pod, denies all but what the params allow, is owned by the pod; a second run is
already-done; a forged event isolates nothing; detach releases a ReplicaSet's pod (and,
with the controller manager running, a replacement appears) and is refused for other owners."""

from __future__ import annotations

import json
import time

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from responder.actions import Outcome, Target
from responder.actions.isolation import ISOLATED, IsolatePod

from .netcat import FULL_CID, netcat_event

pytestmark = pytest.mark.slow

TABLE = """
defaults: {dry_run: false}
rules:
  - name: isolate
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: isolate-pod
        params: %s
"""


@pytest.fixture
def node(cluster):
    return cluster.add_node("node-a").metadata.name


@pytest.fixture
def respond(cluster, apiserver, make_app, make_table):
    """Post one netcat event about pod `web` to an inline app isolating with `params`."""
    def post(params: str = "{}", **fields) -> list[tuple[str, str, str | None]]:
        app = make_app(make_table(TABLE % params), api_client=apiserver.api_client(),
                       intake="inline")
        event = netcat_event(namespace=cluster.namespace, **fields)
        reply = app.test_client().post("/", data=json.dumps(event),
                                       content_type="application/json")
        assert reply.status_code == 200, reply.get_json()
        return [(d["action"], d["outcome"], d.get("reason"))
                for d in reply.get_json()["decisions"]]
    return post


def networking(cluster) -> client.NetworkingV1Api:
    return client.NetworkingV1Api(cluster.core.api_client)


def stored_policy(cluster, name: str = "isolate-web") -> dict:
    """The policy as the apiserver stores it, in its wire form (camelCase)."""
    policy = networking(cluster).read_namespaced_network_policy(name, cluster.namespace)
    return cluster.core.api_client.sanitize_for_serialization(policy)


def no_policy(cluster) -> bool:
    try:
        networking(cluster).read_namespaced_network_policy("isolate-web", cluster.namespace)
    except ApiException as exc:
        return exc.status == 404
    return False


def test_the_stored_policy_denies_all_and_selects_exactly_the_events_pod(cluster, node,
                                                                          respond):
    web = cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    cluster.add_pod("api", node=node)
    cluster.add_pod("web-2", node=node, owner=None, labels={"app": "web"})
    assert respond() == [("isolate-pod", "done", None)]

    policy = stored_policy(cluster)
    selector = policy["spec"]["podSelector"]
    assert selector == {"matchLabels": {ISOLATED: "web"}}
    selected = cluster.core.list_namespaced_pod(
        cluster.namespace, label_selector=",".join(f"{k}={v}" for k, v in
                                                   selector["matchLabels"].items())).items
    assert [p.metadata.name for p in selected] == ["web"]
    # Both directions, no allow rule: deny all.
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"] and "egress" not in policy["spec"]
    assert [(o["kind"], o["name"], o["uid"]) for o in policy["metadata"]["ownerReferences"]] \
        == [("Pod", "web", web.metadata.uid)]


def test_allowances_are_stored_as_the_apiserver_reads_them(cluster, node, respond):
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    params = ("{allow_dns: true, allow_egress_cidrs: [10.0.0.0/8, 'fd00::/8'], "
              "allow_ingress_from: [{namespace_selector: {team: forensics}, "
              "pod_selector: {app: collector}}, {pod_selector: {role: debug}}]}")
    assert respond(params) == [("isolate-pod", "done", None)]
    spec = stored_policy(cluster)["spec"]
    assert spec["egress"] == [
        {"to": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
         "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}, {"ipBlock": {"cidr": "fd00::/8"}}]}]
    assert spec["ingress"] == [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "forensics"}},
         "podSelector": {"matchLabels": {"app": "collector"}}},
        {"podSelector": {"matchLabels": {"role": "debug"}}}]}]


def test_a_second_isolation_is_already_done(cluster, apiserver, node, respond):
    web = cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    assert respond() == [("isolate-pod", "done", None)]
    action = IsolatePod(apiserver.api_client())
    target = Target(cluster.namespace, "web", pod_uid=web.metadata.uid)
    again = action.run(target, {})
    assert (again.outcome, again.reason) == (Outcome.ALREADY_DONE, "already isolated")
    assert again.involved.uid == stored_policy(cluster)["metadata"]["uid"]


@pytest.mark.parametrize("length", [100, 253])
def test_long_pod_names_get_a_hashed_label_and_a_policy_name_within_limits(cluster, apiserver,
                                                                           node, length):
    name = ("w" * 60 + ".") * 5
    name = name[:length - 1].rstrip(".") + "z"
    # Not cluster.add_pod: its `app: <name>` label cannot hold a name this long.
    pod = cluster.core.create_namespaced_pod(cluster.namespace, {
        "metadata": {"name": name}, "spec": {"nodeName": node, "containers": [
            {"name": "c0", "image": "registry.example/app:1"}]}})
    target = Target(cluster.namespace, name, pod_uid=pod.metadata.uid)
    result = IsolatePod(apiserver.api_client()).run(target, {})
    assert result.outcome is Outcome.DONE
    policy = networking(cluster).read_namespaced_network_policy(result.involved.name,
                                                                cluster.namespace)
    assert len(policy.metadata.name) <= 253 and policy.metadata.name.startswith("isolate-w")
    (value,) = policy.spec.pod_selector.match_labels.values()
    assert value.startswith("h-") and len(value) <= 63
    assert cluster.pod(name).metadata.labels[ISOLATED] == value


def test_a_pod_replaced_since_the_event_is_not_isolated(cluster, apiserver, node):
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    target = Target(cluster.namespace, "web", pod_uid="6f1e0c0e-0000-4000-8000-000000000000")
    result = IsolatePod(apiserver.api_client()).run(target, {})
    assert (result.outcome, result.reason) == (
        Outcome.SKIPPED, "pod was replaced since the event (uid changed)")
    assert no_policy(cluster)
    assert ISOLATED not in cluster.pod("web").metadata.labels


@pytest.mark.parametrize("detach", [False, True])
def test_a_pod_gone_or_replaced_before_the_action_runs_is_skipped(cluster, apiserver, node,
                                                                  detach):
    """Detach reads the pod first (for its ReplicaSet): that read says gone or replaced as
    the label patch does, skipped with the reason, never a failure."""
    action = IsolatePod(apiserver.api_client())
    gone = action.run(Target(cluster.namespace, "web"), {"detach": detach})
    assert (gone.outcome, gone.reason) == (Outcome.SKIPPED, "pod no longer exists")
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    other = Target(cluster.namespace, "web", pod_uid="6f1e0c0e-0000-4000-8000-000000000000")
    replaced = action.run(other, {"detach": detach})
    assert (replaced.outcome, replaced.reason) == (
        Outcome.SKIPPED, "pod was replaced since the event (uid changed)")
    assert no_policy(cluster)
    assert ISOLATED not in cluster.pod("web").metadata.labels


def test_the_labels_are_patched_as_the_responders_field_manager(cluster, node, respond):
    """`kubectl get pod -o yaml --show-managed-fields` names who set the isolation label and
    who took the ReplicaSet's, as for label-pod and cordon."""
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,), labels={"tier": "front"})
    assert respond("{detach: true}") == [("isolate-pod", "done", None)]
    managers = {entry.manager: entry.fields_v1 for entry in
                cluster.pod("web").metadata.managed_fields
                if entry.operation == "Update"}
    assert f"f:{ISOLATED}" in managers["falco-responder"]["f:metadata"]["f:labels"]


def test_undo_deletes_the_policy_and_removes_the_label(cluster, apiserver, node, respond):
    web = cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    assert respond() == [("isolate-pod", "done", None)]
    action = IsolatePod(apiserver.api_client())
    target = Target(cluster.namespace, "web", pod_uid=web.metadata.uid)
    assert action.undo(target, {}).outcome is Outcome.DONE
    assert no_policy(cluster)
    assert ISOLATED not in cluster.pod("web").metadata.labels


def test_a_forged_container_id_isolates_nothing(cluster, node, respond):
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    assert respond(**{"container.id": "fedcba987654"}) == [
        ("isolate-pod", "skipped",
         "container not in pod (container.id fedcba987654 is not one of its own)")]
    assert no_policy(cluster)
    assert ISOLATED not in cluster.pod("web").metadata.labels


def test_detach_removes_the_replicaset_selector_labels_and_keeps_the_pod(cluster, node,
                                                                          respond):
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,), labels={"tier": "front"})
    assert respond("{detach: true}") == [("isolate-pod", "done", None)]
    labels = cluster.pod("web").metadata.labels
    # The ReplicaSet selected {app: web, tier: front}; the isolation label stays.
    assert labels == {ISOLATED: "web"}
    assert stored_policy(cluster)["spec"]["podSelector"] == {"matchLabels": {ISOLATED: "web"}}


@pytest.mark.parametrize(("owner", "named"), [
    (None, "none (a standalone pod, or one detached already)"), ("DaemonSet", "DaemonSet")])
def test_detach_is_refused_for_pods_no_replicaset_owns(cluster, node, respond, owner, named):
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,), owner=owner)
    assert respond("{detach: true}") == [
        ("isolate-pod", "skipped", f"detach needs a pod owned by a ReplicaSet (owner: {named}); "
         "nothing would start a replacement")]
    assert no_policy(cluster)
    assert ISOLATED not in cluster.pod("web").metadata.labels


def test_detach_is_refused_for_a_selector_of_match_expressions_only(cluster, node, respond):
    labels = {"app": "web"}
    template = {"metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c0", "image": "registry.example/app:1"}]}}
    rs = cluster.apps.create_namespaced_replica_set(cluster.namespace, {
        "metadata": {"name": "web-owner"},
        "spec": {"replicas": 1, "template": template, "selector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["web"]}]}}})
    pod = cluster.core.create_namespaced_pod(cluster.namespace, {
        "metadata": {"name": "web", "labels": labels, "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-owner",
            "uid": rs.metadata.uid, "controller": True}]},
        "spec": {"nodeName": node, "containers": template["spec"]["containers"]}})
    cluster.set_running(pod, (FULL_CID,))
    assert respond("{detach: true}") == [
        ("isolate-pod", "skipped", "detach: ReplicaSet web-owner selects by matchExpressions "
         "only; removing labels may not release the pod")]
    assert no_policy(cluster)


def wait_for(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return found


# Last in the module: the controller manager, once started, runs for the module's rest.
def test_detach_lets_the_replicaset_start_a_replacement_and_gc_follows_the_pod(
        cluster, node, respond, controller_manager):
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    assert respond("{detach: true}") == [("isolate-pod", "done", None)]
    replacement = wait_for(lambda: [p.metadata.name for p in cluster.core.list_namespaced_pod(
        cluster.namespace, label_selector="app=web").items if p.metadata.name != "web"])
    assert len(replacement) == 1
    isolated = cluster.pod("web")
    assert isolated is not None and isolated.metadata.labels == {ISOLATED: "web"}
    # The policy is owned by the isolated pod: deleting the pod deletes it.
    cluster.core.delete_namespaced_pod("web", cluster.namespace, grace_period_seconds=0)
    wait_for(lambda: no_policy(cluster))
