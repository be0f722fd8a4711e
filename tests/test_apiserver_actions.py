"""Each action through the webhook against a real kube-apiserver: what it changes, its
outcomes (done, already-done, 404, 409 on the uid precondition) and the requests it sends."""

import json

import pytest

from responder.actions import Outcome, Target, default_registry

from .netcat import FULL_CID, netcat_event

pytestmark = pytest.mark.slow

ARMED = """
defaults: {dry_run: false, protected_namespaces: [kube-system]}
rules:
  - name: kill-reverse-shells
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true"}}
      - action: delete-pod
        params: {grace_period_seconds: 0}
      - action: cordon-node
"""
# The same rule, allowed to act on what it cannot verify (a node named by the hostname alone).
UNVERIFIED_ALLOWED = ARMED.replace("      - action: cordon-node\n",
                                   "      - action: cordon-node\n    allow_unverified: true\n")


@pytest.fixture
def shop(cluster):
    """Pod `web` (one of a ReplicaSet's) on node-a; node-b keeps node-a from being the last
    schedulable node. Returns the node-a name."""
    node = cluster.add_node("node-a").metadata.name
    cluster.add_node("node-b")
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    return node


@pytest.fixture
def respond(cluster, apiserver, make_app, make_table):
    """Post one event to an inline app armed with `table`; the reply's decisions."""
    def post(table=ARMED, api_client=None, **fields):
        app = make_app(make_table(table), api_client=api_client or apiserver.api_client(),
                       intake="inline")
        fields.setdefault("hostname", "falco-host")
        event = netcat_event(namespace=cluster.namespace, **fields)
        reply = app.test_client().post("/", data=json.dumps(event),
                                       content_type="application/json")
        assert reply.status_code == 200, reply.get_json()
        return reply.get_json()["decisions"]
    return post


def outcomes(decisions):
    return [(d["action"], d["outcome"], d.get("reason")) for d in decisions]


def test_armed_rule_labels_deletes_and_cordons_the_real_objects(cluster, apiserver, shop,
                                                                 respond):
    pod_uid = cluster.pod("web").metadata.uid
    mark = apiserver.audit_mark()
    decisions = respond()
    assert outcomes(decisions) == [("label-pod", "done", None), ("delete-pod", "done", None),
                                   ("cordon-node", "done", None)]
    assert decisions[2]["target"] == {"namespace": cluster.namespace, "pod": "web",
                                      "node": shop}
    assert cluster.pod("web") is None  # grace period 0: gone at once, even without a kubelet
    assert cluster.core.read_node(shop).spec.unschedulable is True

    pod, ns = f"/api/v1/namespaces/{cluster.namespace}/pods/web", cluster.namespace
    node = f"/api/v1/nodes/{shop}"
    seen = apiserver.requests_since(mark)
    # The pod read once (node, containers, owners) before anything changes it; label-pod
    # reads the labels' values before it (for undo); the node list for the cordon limits;
    # then one audit Event per action, each accepted (201).
    assert [(r.verb, r.path, r.code) for r in seen] == [
        ("get", pod, 200), ("get", pod, 200), ("patch", pod, 200), ("delete", pod, 200),
        ("list", "/api/v1/nodes", 200), ("get", node, 200), ("patch", node, 200),
        ("create", f"/api/v1/namespaces/{ns}/events", 201),
        ("create", f"/api/v1/namespaces/{ns}/events", 201),
        ("create", "/api/v1/namespaces/default/events", 201)]
    assert seen[2].body == {"metadata": {"uid": pod_uid, "labels": {"quarantine": "true"}}}
    assert seen[3].body["gracePeriodSeconds"] == 0
    assert seen[3].body["preconditions"] == {"uid": pod_uid}
    assert seen[6].body == {"spec": {"unschedulable": True}}


def test_label_pod_sets_the_labels_on_the_live_pod(cluster, shop, respond):
    table = ARMED.split("      - action: delete-pod")[0]
    assert outcomes(respond(table)) == [("label-pod", "done", None)]
    labels = cluster.pod("web").metadata.labels
    assert labels == {"app": "web", "quarantine": "true"}


def test_graceful_delete_leaves_the_pod_terminating_without_a_kubelet(cluster, shop, respond):
    table = ARMED.replace("params: {grace_period_seconds: 0}", "params: {}")
    assert outcomes(respond(table))[1] == ("delete-pod", "done", None)
    pod = cluster.pod("web")
    # The API server only marks it: finishing a graceful delete is the kubelet's job.
    assert pod.metadata.deletion_timestamp is not None
    assert pod.metadata.deletion_grace_period_seconds == 30  # the pod's own default


def test_deleting_a_terminating_pod_again_is_already_done(cluster, shop, respond):
    table = ARMED.replace("params: {grace_period_seconds: 0}", "params: {}")
    respond(table, uuid="first")
    # The server would answer a second DELETE 200 with the pod it is still deleting; the
    # pod read first shows it being deleted, so none is sent (test_apiserver_terminating_pod).
    assert outcomes(respond(table, uuid="second"))[1] == ("delete-pod", "already-done",
                                                          "already being deleted")
    assert cluster.pod("web").metadata.deletion_timestamp is not None


def test_missing_pod_is_already_gone_for_delete_and_skipped_for_label(cluster, respond):
    cluster.add_node("node-a")
    cluster.add_node("node-b")
    decisions = respond()
    assert outcomes(decisions)[:2] == [("label-pod", "skipped", "pod no longer exists"),
                                       ("delete-pod", "already-done", "already gone")]
    # The pod is unknown, so the node falls back to the event's hostname, which any sender
    # can name: no cordon on that alone.
    assert decisions[2]["target"]["node"] == "falco-host"
    assert decisions[2]["outcome"] == "skipped"
    assert "allow_unverified: true" in decisions[2]["reason"]


def test_missing_pod_cordons_the_hostname_only_where_the_rule_allows_unverified(cluster,
                                                                                respond):
    cluster.add_node("node-a")
    cluster.add_node("node-b")
    decisions = respond(UNVERIFIED_ALLOWED)
    assert outcomes(decisions)[2] == ("cordon-node", "failed",
                                      'HTTP 404: nodes "falco-host" not found')


def test_already_cordoned_node_is_a_success_without_a_patch(cluster, apiserver, respond):
    node = cluster.add_node("node-a", unschedulable=True).metadata.name
    cluster.add_node("node-b")
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    mark = apiserver.audit_mark()
    assert outcomes(respond())[2] == ("cordon-node", "already-done", "already cordoned")
    assert ("patch", f"/api/v1/nodes/{node}") not in [
        (r.verb, r.path) for r in apiserver.requests_since(mark)]


def test_delete_with_the_uid_of_a_replaced_pod_is_refused_by_the_server(cluster, admin_api,
                                                                        shop):
    action = default_registry().instantiate(admin_api, 5)["delete-pod"]
    old_uid = "9d6f0c4e-0000-4000-8000-000000000000"
    result = action.run(Target(cluster.namespace, "web", pod_uid=old_uid), {})
    # 409 "Precondition failed: UID in precondition ... UID in object meta ...".
    assert (result.outcome, result.reason) == (
        Outcome.SKIPPED, "pod was replaced since the event (uid changed)")
    assert cluster.pod("web").metadata.deletion_timestamp is None


def test_delete_with_the_current_uid_deletes(cluster, admin_api, shop):
    action = default_registry().instantiate(admin_api, 5)["delete-pod"]
    uid = cluster.pod("web").metadata.uid
    result = action.run(Target(cluster.namespace, "web", pod_uid=uid),
                        {"grace_period_seconds": 0})
    assert result.outcome == Outcome.DONE and result.involved.uid == uid
    assert cluster.pod("web") is None


def test_actions_after_a_delete_skip_the_deleted_pod(cluster, apiserver, shop, respond):
    table = ARMED.replace("      - action: cordon-node", "      - action: label-pod\n"
                          "        params: {labels: {after: \"x\"}}")
    mark = apiserver.audit_mark()
    assert outcomes(respond(table))[2] == ("label-pod", "skipped",
                                           "pod was deleted by an earlier action")
    assert [r.verb for r in apiserver.requests_since(mark) if "/events" not in r.path] == [
        "get", "get", "patch", "delete"]


def test_dry_run_sends_no_request_at_all(cluster, apiserver, shop, respond):
    mark = apiserver.audit_mark()
    decisions = respond(ARMED.replace("dry_run: false", "dry_run: true"))
    assert [d["outcome"] for d in decisions] == ["would-run"] * 3
    assert apiserver.requests_since(mark) == []
    assert cluster.pod("web").metadata.labels == {"app": "web"}


def test_forced_dry_run_setting_overrides_an_armed_table(cluster, apiserver, shop,
                                                        make_app, make_table):
    app = make_app(make_table(ARMED), api_client=apiserver.api_client(), dry_run=True,
                   intake="inline")
    mark = apiserver.audit_mark()
    reply = app.test_client().post("/", data=json.dumps(
        netcat_event(namespace=cluster.namespace)), content_type="application/json")
    assert [d["outcome"] for d in reply.get_json()["decisions"]] == ["would-run"] * 3
    assert apiserver.requests_since(mark) == []


def test_protected_namespace_is_skipped_without_any_request(apiserver, respond):
    mark = apiserver.audit_mark()
    decisions = respond(**{"k8s.ns.name": "kube-system"})
    assert {d["outcome"] for d in decisions} == {"skipped"}
    assert apiserver.requests_since(mark) == []


def test_responder_never_acts_in_its_own_namespace(cluster, apiserver, shop, make_app,
                                                   make_table):
    app = make_app(make_table(ARMED), api_client=apiserver.api_client(),
                   namespace=cluster.namespace, intake="inline")
    mark = apiserver.audit_mark()
    reply = app.test_client().post("/", data=json.dumps(
        netcat_event(namespace=cluster.namespace)), content_type="application/json")
    assert {d["reason"] for d in reply.get_json()["decisions"]} == {
        f"namespace {cluster.namespace} is protected"}
    assert apiserver.requests_since(mark) == []
    assert cluster.pod("web") is not None


def test_host_event_cordons_nothing_unless_the_rule_allows_unverified(cluster, respond):
    host = cluster.add_node("host").metadata.name
    cluster.add_node("other")
    decisions = respond(pod=None, hostname=host, **{"container.id": "host"})
    assert [d["outcome"] for d in decisions] == ["skipped", "skipped", "skipped"]
    assert "only the event's hostname" in decisions[2]["reason"]
    assert not cluster.core.read_node(host).spec.unschedulable


def test_host_event_skips_pod_actions_and_cordons_the_event_hostname(cluster, respond):
    host = cluster.add_node("host").metadata.name
    cluster.add_node("other")
    decisions = respond(UNVERIFIED_ALLOWED, pod=None, hostname=host, **{"container.id": "host"})
    assert [d["outcome"] for d in decisions] == ["skipped", "skipped", "done"]
    assert cluster.core.read_node(host).spec.unschedulable is True
    (recorded,) = cluster.node_events()
    assert recorded.involved_object.name == host
