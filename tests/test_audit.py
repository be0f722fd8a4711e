"""Audit Events that need a fault or no server: a refused or unreachable API never raises; names.
What a real kube-apiserver accepts and stores: tests/test_apiserver_audit.py."""

from __future__ import annotations

import logging
import re
import socket
from datetime import UTC, datetime

import pytest
from kubernetes import client

from responder.actions import ObjectRef, Outcome, Result, Target
from responder.actions.pods import POD
from responder.audit import EventRecorder, event_name
from responder.decisions import Decision
from responder.events import event_from_dict
from responder.executor import ActionReport

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


def report(outcome, dry_run=False, involved=None, reason=None):
    target = Target("prod", "web-1", "node-1")
    decision = Decision("kill-shells", "delete-pod", {}, target, ("namespace", "pod"), dry_run,
                        acts_on=POD)
    return ActionReport(decision, target, Result(outcome, reason, involved))


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


def test_event_names_are_unique_and_valid_for_long_object_names():
    long_name = "a" * 253
    names = {event_name(long_name) for _ in range(50)}
    assert len(names) == 50
    assert all(len(n) <= 253 and re.fullmatch(r"a+\.[0-9a-f]{16}", n) for n in names)


def test_default_instance_is_the_hostname(core):
    assert EventRecorder(core, timeout=1).instance == socket.gethostname()[:128]
