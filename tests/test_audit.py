"""Audit Events: one core/v1 Event per action performed, seen by the Kubernetes API test server."""

from __future__ import annotations

import logging
import re
import socket
from datetime import UTC, datetime

import pytest
from kubernetes import client

from responder.actions import ObjectRef, Outcome, Result, Target
from responder.audit import EventRecorder, event_name
from responder.decisions import Decision, plan_response
from responder.events import event_from_dict
from responder.executor import ActionReport, Executor

ARMED = """
defaults: {dry_run: false}
rules:
  - name: kill-shells
    match: {rules: ["Terminal shell in container"]}
    actions:
      - action: delete-pod
      - action: cordon-node
"""
NOW = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
EVENTS_PROD = "/api/v1/namespaces/prod/events"


def shell_event():
    return event_from_dict({
        "uuid": "u-1", "rule": "Terminal shell in container", "priority": "Critical",
        "source": "syscall", "time": "2024-05-01T10:00:00Z", "hostname": "falco-on-node-1",
        "output_fields": {"k8s.ns.name": "prod", "k8s.pod.name": "web-1",
                          "container.id": "abc123000000"}})


@pytest.fixture
def core(kube):
    with kube.api_client() as api_client:
        yield client.CoreV1Api(api_client)


@pytest.fixture
def recorder(core):
    return EventRecorder(core, timeout=5, instance="responder-7d9f-abcde", now=lambda: NOW)


# The pod's own container, as the runtime reports it: Falco's 12-character id is its prefix.
OWN_CONTAINER = "abc123" + "0" * 58


@pytest.fixture
def respond(kube, core, make_table, registry):
    """Run the armed table against the test server and return the action reports."""
    kube.api.add_node("node-1")
    table = make_table(ARMED)
    executor = Executor(registry.instantiate(core, 5))

    def run(event):
        return executor.execute(plan_response(table, registry, event))
    return run


def report(outcome, dry_run=False, involved=None, reason=None):
    target = Target("prod", "web-1", "node-1")
    decision = Decision("kill-shells", "delete-pod", {}, target, ("namespace", "pod"), dry_run)
    return ActionReport(decision, target, Result(outcome, reason, involved))


def test_deleted_pod_gets_an_event_with_its_uid(kube, recorder, respond):
    pod = kube.api.add_pod("prod", "web-1", node="node-1", container_ids=(OWN_CONTAINER,))
    event = shell_event()
    delete, _cordon = respond(event)
    assert recorder.record(event, delete) is True

    (call,) = [c for c in kube.api.calls if c.path.endswith("/events")]
    assert (call.method, call.path) == ("POST", EVENTS_PROD)
    body = call.body
    assert re.fullmatch(r"web-1\.[0-9a-f]{16}", body["metadata"]["name"])
    assert body["metadata"]["namespace"] == "prod"
    assert body["involvedObject"] == {"kind": "Pod", "name": "web-1", "namespace": "prod",
                                      "uid": pod["metadata"]["uid"], "apiVersion": "v1"}
    assert body["reason"] == "FalcoResponse"
    assert body["type"] == "Warning"
    assert body["action"] == "delete-pod"
    assert body["message"] == ("Falco rule 'Terminal shell in container' matched table rule "
                               "'kill-shells': delete-pod done; Falco event u-1")
    assert body["reportingComponent"] == "falco-responder"
    assert body["reportingInstance"] == "responder-7d9f-abcde"
    assert body["source"] == {"component": "falco-responder"}
    assert body["count"] == 1
    assert _parse(body["firstTimestamp"]) == _parse(body["lastTimestamp"]) == NOW.replace(
        microsecond=0)
    assert _parse(body["eventTime"]) == NOW
    assert len(kube.api.events) == 1


def test_cordoned_node_gets_an_event_in_the_default_namespace(kube, recorder, respond):
    kube.api.add_pod("prod", "web-1", node="node-1", container_ids=(OWN_CONTAINER,))
    node_uid = kube.api.nodes["node-1"]["metadata"]["uid"]
    event = shell_event()
    _delete, cordon = respond(event)
    assert cordon.result.outcome == Outcome.DONE
    assert recorder.record(event, cordon) is True
    (created,) = kube.api.events
    assert created["metadata"]["namespace"] == "default"
    assert created["involvedObject"] == {"kind": "Node", "name": "node-1", "uid": node_uid,
                                         "apiVersion": "v1"}
    assert "cordon-node done" in created["message"]
    assert [c.path for c in kube.api.calls if c.method == "POST"] == [
        "/api/v1/namespaces/default/events"]


def test_already_gone_pod_is_recorded_by_name(kube, recorder):
    assert recorder.record(shell_event(), report(Outcome.ALREADY_DONE, reason="already gone"))
    (created,) = kube.api.events
    assert created["involvedObject"] == {"kind": "Pod", "name": "web-1", "namespace": "prod",
                                         "apiVersion": "v1"}
    assert "delete-pod already gone; Falco event u-1" in created["message"]


@pytest.mark.parametrize(("outcome", "dry_run"), [
    (Outcome.DONE, True),
    (Outcome.WOULD_RUN, True),
    (Outcome.WOULD_RUN, False),
    (Outcome.SKIPPED, False),
    (Outcome.FAILED, False),
])
def test_nothing_is_recorded_unless_an_action_was_performed(kube, recorder, outcome, dry_run):
    involved = ObjectRef("Pod", "web-1", "prod", "uid-1")
    assert recorder.record(shell_event(), report(outcome, dry_run, involved)) is False
    assert kube.api.calls == []


def test_refused_event_is_logged_and_never_raises(kube, recorder, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("responder"), "propagate", True)
    kube.api.fail("POST", EVENTS_PROD, 403, 'events is forbidden: User "x" cannot create')
    involved = ObjectRef("Pod", "web-1", "prod", "uid-1")
    with caplog.at_level(logging.WARNING):
        assert recorder.record(shell_event(), report(Outcome.DONE, involved=involved)) is False
    assert "cannot record audit Event for delete-pod on Pod web-1" in caplog.text
    assert "HTTP 403: events is forbidden" in caplog.text


def test_unreachable_api_is_logged_and_never_raises(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("responder"), "propagate", True)
    configuration = client.Configuration(host="http://127.0.0.1:9")
    configuration.retries = 0
    with client.ApiClient(configuration) as api_client:
        recorder = EventRecorder(client.CoreV1Api(api_client), timeout=2)
        involved = ObjectRef("Pod", "web-1", "prod", "uid-1")
        assert recorder.record(shell_event(), report(Outcome.DONE, involved=involved)) is False
    assert "cannot reach the Kubernetes API" in caplog.text


def test_record_all_counts_the_events_created(kube, recorder, respond):
    kube.api.add_pod("prod", "web-1", node="node-1", container_ids=(OWN_CONTAINER,))
    event = shell_event()
    assert recorder.record_all(event, respond(event)) == 2
    assert [e["action"] for e in kube.api.events] == ["delete-pod", "cordon-node"]


def test_event_names_are_unique_and_valid_for_long_object_names():
    long_name = "a" * 253
    names = {event_name(long_name) for _ in range(50)}
    assert len(names) == 50
    assert all(len(n) <= 253 and re.fullmatch(r"a+\.[0-9a-f]{16}", n) for n in names)


def test_default_instance_is_the_hostname(core):
    assert EventRecorder(core, timeout=1).instance == socket.gethostname()[:128]


def _parse(value):
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
