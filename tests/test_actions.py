"""Actions when the Kubernetes API fails (the stand-in injects the faults): retries, Retry-After,
errors recorded with the API's message, refused connections. What the actions do on a real
kube-apiserver: tests/test_apiserver_actions.py."""

import json
import socket
import time

import pytest
from kubernetes import client

from responder.retry import RetryPolicy

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


def netcat_event(**fields):
    return base_netcat_event(hostname="falco-host", **fields)


@pytest.fixture
def armed(kube, make_table, make_app):
    kube.api.add_pod("shop", "web", node="node-a", container_ids=(FULL_CID,))
    kube.api.add_node("node-a")
    kube.api.add_node("node-b")  # cordoning the last schedulable node is refused
    app = make_app(make_table(ARMED), api_client=kube.api_client(), intake="inline")
    return app.test_client()


def record_waits(test_client) -> list[float]:
    """The waits between retries, recorded instead of slept through."""
    waits: list[float] = []
    executor = test_client.application.extensions["responder"].executor
    executor.retry = RetryPolicy(sleep=waits.append)
    return waits


def post(test_client, event):
    reply = test_client.post("/", data=json.dumps(event), content_type="application/json")
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()


def outcomes(reply):
    return [(d["action"], d["outcome"], d.get("reason")) for d in reply["decisions"]]


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_transient_api_errors_are_retried_then_done(kube, armed, status):
    waits = record_waits(armed)
    kube.api.fail("DELETE", POD, status, "try again", times=2)
    reply = post(armed, netcat_event())
    assert outcomes(reply)[1] == ("delete-pod", "done", None)
    assert [c.method for c in kube.api.calls if c.path == POD].count("DELETE") == 3
    assert len(waits) == 2


@pytest.mark.slow
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
    waits = record_waits(armed)
    kube.api.fail("DELETE", POD, status, message, times=10)
    reply = post(armed, netcat_event())
    assert outcomes(reply)[1] == ("delete-pod", "failed", f"HTTP {status}: {message}")
    # One failure does not stop the other actions.
    assert outcomes(reply)[0][1] == "done" and outcomes(reply)[2][1] == "done"
    # A refusal (403) is not retried; transient errors are, a bounded number of times.
    deletes = [c for c in kube.api.calls if c.method == "DELETE"]
    assert len(deletes) == (1 if status == 403 else 4)
    assert len(waits) == len(deletes) - 1


def test_refused_connection_is_recorded_as_failed(make_table, make_app):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = 0
    app = make_app(make_table(ARMED), api_client=client.ApiClient(configuration),
                   intake="inline")
    record_waits(app.test_client())
    reply = post(app.test_client(), netcat_event())
    assert [d["outcome"] for d in reply["decisions"]] == ["failed", "failed", "failed"]
    assert "cannot reach the Kubernetes API" in reply["decisions"][0]["reason"]
