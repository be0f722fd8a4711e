"""Actions through the webhook against a real-HTTP Kubernetes API: the exact requests made."""

import json
import socket
import time

import pytest
from kubernetes import client

from .netcat import FULL_CID
from .netcat import netcat_event as base_netcat_event

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
POD = "/api/v1/namespaces/shop/pods/web"
NODE = "/api/v1/nodes/node-a"


def netcat_event(**fields):
    return base_netcat_event(hostname="falco-host", **fields)


@pytest.fixture
def armed(kube, make_table, make_app):
    kube.api.add_pod("shop", "web", node="node-a", container_ids=(FULL_CID,))
    kube.api.add_node("node-a")
    kube.api.add_node("node-b")  # cordoning the last schedulable node is refused
    app = make_app(make_table(ARMED), api_client=kube.api_client(), intake="inline")
    return app.test_client()


def post(test_client, event):
    reply = test_client.post("/", data=json.dumps(event), content_type="application/json")
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()


def outcomes(reply):
    return [(d["action"], d["outcome"], d.get("reason")) for d in reply["decisions"]]


def test_armed_rule_labels_deletes_and_cordons_with_exact_requests(kube, armed):
    pod_uid = kube.api.pods[("shop", "web")]["metadata"]["uid"]
    reply = post(armed, netcat_event())
    assert outcomes(reply) == [("label-pod", "done", None), ("delete-pod", "done", None),
                               ("cordon-node", "done", None)]
    actions = [m for m in kube.api.mutations() if not m[1].endswith("/events")]
    assert actions == [
        ("PATCH", POD, {"metadata": {"labels": {"quarantine": "true"}}}),
        ("DELETE", POD, {"gracePeriodSeconds": 0, "preconditions": {"uid": pod_uid}}),
        ("PATCH", NODE, {"spec": {"unschedulable": True}}),
    ]
    patches = [c for c in kube.api.calls if c.method == "PATCH"]
    assert {c.content_type for c in patches} == {"application/merge-patch+json"}
    # Every request, in order: the pod read once (node, containers, owners) before anything
    # changes it; the node list for the cordon limits; then one audit Event per action.
    assert [(c.method, c.path) for c in kube.api.calls] == [
        ("GET", POD), ("PATCH", POD), ("DELETE", POD), ("GET", "/api/v1/nodes"),
        ("GET", NODE), ("PATCH", NODE), ("POST", "/api/v1/namespaces/shop/events"),
        ("POST", "/api/v1/namespaces/shop/events"), ("POST", "/api/v1/namespaces/default/events"),
    ]
    assert reply["decisions"][2]["target"] == {"namespace": "shop", "pod": "web",
                                               "node": "node-a"}


def test_each_performed_action_leaves_an_audit_event_with_the_object_uid(kube, armed):
    pod_uid = kube.api.pods[("shop", "web")]["metadata"]["uid"]
    node_uid = kube.api.nodes["node-a"]["metadata"]["uid"]
    post(armed, netcat_event())
    involved = [(e["involvedObject"]["kind"], e["involvedObject"]["name"],
                 e["involvedObject"].get("uid"), e["reason"], e["reportingComponent"])
                for e in kube.api.events]
    assert involved == [("Pod", "web", pod_uid, "FalcoResponse", "falco-responder"),
                        ("Pod", "web", pod_uid, "FalcoResponse", "falco-responder"),
                        ("Node", "node-a", node_uid, "FalcoResponse", "falco-responder")]
    assert "Netcat Remote Code Execution in Container" in kube.api.events[1]["message"]
    assert "kill-reverse-shells" in kube.api.events[1]["message"]


def test_delete_pod_treats_404_as_already_gone(kube, make_table, make_app):
    kube.api.add_node("node-a")
    kube.api.add_node("node-b")
    app = make_app(make_table(ARMED), api_client=kube.api_client(),
                   intake="inline").test_client()
    reply = post(app, netcat_event())
    assert outcomes(reply)[:2] == [("label-pod", "skipped", "pod no longer exists"),
                                   ("delete-pod", "already-done", "already gone")]
    # The pod is unknown, so the node falls back to the event's hostname.
    assert reply["decisions"][2]["target"]["node"] == "falco-host"
    assert outcomes(reply)[2] == ("cordon-node", "failed", 'HTTP 404: nodes "falco-host" not found')


def test_already_cordoned_node_is_a_success_without_a_patch(kube, armed):
    kube.api.nodes["node-a"]["spec"]["unschedulable"] = True
    reply = post(armed, netcat_event())
    assert outcomes(reply)[2] == ("cordon-node", "already-done", "already cordoned")
    assert ("PATCH", NODE) not in [(m[0], m[1]) for m in kube.api.mutations()]


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_transient_api_errors_are_retried_then_done(kube, armed, status):
    kube.api.fail("DELETE", POD, status, "try again", times=2)
    reply = post(armed, netcat_event())
    assert outcomes(reply)[1] == ("delete-pod", "done", None)
    assert [c.method for c in kube.api.calls if c.path == POD].count("DELETE") == 3


def test_retry_after_from_the_api_is_honoured(kube, armed):
    kube.api.fail("DELETE", POD, 429, "slow down", headers={"Retry-After": "1"})
    started = time.monotonic()
    reply = post(armed, netcat_event())
    assert outcomes(reply)[1] == ("delete-pod", "done", None)
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize(("status", "message"), [
    (403, 'pods "web" is forbidden: User "system:serviceaccount:x:y" cannot delete resource'),
    (409, "Operation cannot be fulfilled on pods \"web\": the object has been modified"),
    (500, "etcdserver: request timed out"),
])
def test_api_errors_are_recorded_as_failed_with_the_api_message(kube, armed, status, message):
    kube.api.fail("DELETE", POD, status, message, times=10)
    reply = post(armed, netcat_event())
    assert outcomes(reply)[1] == ("delete-pod", "failed", f"HTTP {status}: {message}")
    # One failure does not stop the other actions.
    assert outcomes(reply)[0][1] == "done" and outcomes(reply)[2][1] == "done"
    # A refusal (403) is not retried; transient errors are, a bounded number of times.
    deletes = [c for c in kube.api.calls if c.method == "DELETE"]
    assert len(deletes) == (1 if status == 403 else 4)


def test_refused_connection_is_recorded_as_failed(make_table, make_app):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = 0
    app = make_app(make_table(ARMED), api_client=client.ApiClient(configuration),
                   intake="inline")
    reply = post(app.test_client(), netcat_event())
    assert [d["outcome"] for d in reply["decisions"]] == ["failed", "failed", "failed"]
    assert "cannot reach the Kubernetes API" in reply["decisions"][0]["reason"]


def test_actions_after_a_delete_skip_the_deleted_pod(kube, make_table, make_app):
    kube.api.add_pod("shop", "web", container_ids=(FULL_CID,))
    table = make_table(ARMED.replace("      - action: cordon-node", "      - action: label-pod\n"
                                     "        params: {labels: {after: \"x\"}}"))
    app = make_app(table, api_client=kube.api_client(), intake="inline")
    reply = post(app.test_client(), netcat_event())
    assert outcomes(reply)[2] == ("label-pod", "skipped", "pod was deleted by an earlier action")
    assert [m[0] for m in kube.api.mutations() if not m[1].endswith("/events")] == [
        "PATCH", "DELETE"]


def test_dry_run_sends_no_request_at_all(kube, make_table, make_app):
    kube.api.add_pod("shop", "web")
    table = make_table(ARMED.replace("dry_run: false", "dry_run: true"))
    app = make_app(table, api_client=kube.api_client(), intake="inline")
    reply = post(app.test_client(), netcat_event())
    assert [d["outcome"] for d in reply["decisions"]] == ["would-run"] * 3
    assert all(d["dry_run"] for d in reply["decisions"])
    assert kube.api.calls == []


def test_forced_dry_run_setting_overrides_an_armed_table(kube, make_table, make_app):
    app = make_app(make_table(ARMED), api_client=kube.api_client(), force_dry_run=True,
                   intake="inline")
    reply = post(app.test_client(), netcat_event())
    assert [d["outcome"] for d in reply["decisions"]] == ["would-run"] * 3
    assert kube.api.calls == []


def test_protected_namespace_is_skipped_without_any_request(kube, armed):
    reply = post(armed, netcat_event(**{"k8s.ns.name": "kube-system"}))
    assert {d["outcome"] for d in reply["decisions"]} == {"skipped"}
    assert kube.api.calls == []


def test_responder_never_acts_in_its_own_namespace(kube, make_table, make_app):
    app = make_app(make_table(ARMED), api_client=kube.api_client(), namespace="shop",
                   intake="inline")
    reply = post(app.test_client(), netcat_event())
    assert {d["reason"] for d in reply["decisions"]} == {"namespace shop is protected"}
    assert kube.api.calls == []


def test_host_event_skips_pod_actions_and_cordons_the_event_hostname(kube, armed):
    kube.api.add_node("falco-host")
    reply = post(armed, netcat_event(**{"k8s.pod.name": None, "container.id": "host"}))
    assert [d["outcome"] for d in reply["decisions"]] == ["skipped", "skipped", "done"]
    assert kube.api.mutations()[0] == ("PATCH", "/api/v1/nodes/falco-host",
                                       {"spec": {"unschedulable": True}})
    assert [m[1] for m in kube.api.mutations()[1:]] == ["/api/v1/namespaces/default/events"]
