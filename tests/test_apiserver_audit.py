"""Audit Events, as a real kube-apiserver validates and stores them: one per action performed,
in the object's namespace (nodes: "default"), naming the object with its uid."""

import re
from datetime import UTC, datetime

import pytest
from kubernetes import client

from responder.actions import ObjectRef, Outcome, Result, Target
from responder.actions.pods import POD
from responder.audit import EventRecorder
from responder.decisions import Decision, plan_response
from responder.events import event_from_dict
from responder.executor import ActionReport, Executor
from responder.guardrails import Guardrails
from responder.journal import EventStore
from responder.localstate import LocalState

from .netcat import CID, FULL_CID

pytestmark = pytest.mark.slow

ARMED = """
defaults: {dry_run: false}
rules:
  - name: kill-shells
    match: {rules: ["Terminal shell in container"]}
    actions:
      - action: delete-pod
        params: {grace_period_seconds: 0}
      - action: cordon-node
"""
NOW = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


def shell_event(namespace):
    return event_from_dict({
        "uuid": "u-1", "rule": "Terminal shell in container", "priority": "Critical",
        "source": "syscall", "time": "2024-05-01T10:00:00Z", "hostname": "falco-on-node-1",
        "output_fields": {"k8s.ns.name": namespace, "k8s.pod.name": "web-1",
                          "container.id": CID}})


@pytest.fixture
def core(apiserver):
    with apiserver.api_client() as api_client:
        yield client.CoreV1Api(api_client)


@pytest.fixture
def recorder(core):
    return EventRecorder(core, timeout=5, instance="responder-7d9f-abcde", now=lambda: NOW)


@pytest.fixture
def pod(cluster):
    node = cluster.add_node("node-1").metadata.name
    cluster.add_node("node-2")
    return cluster.add_pod("web-1", node=node, container_ids=(FULL_CID,))


@pytest.fixture
def respond(core, make_table, registry, tmp_path):
    """Run the armed table against the apiserver; the action reports."""
    table = make_table(ARMED)
    store = EventStore(tmp_path)
    executor = Executor(registry.instantiate(core.api_client, 5),
                        guardrails=Guardrails(LocalState(store)))

    def run(event):
        return executor.execute(plan_response(table, registry, event))
    yield run
    store.close()


def report(namespace, outcome, dry_run=False, involved=None, reason=None):
    target = Target(namespace, "web-1", "node-1")
    decision = Decision("kill-shells", "delete-pod", {}, target, ("namespace", "pod"), dry_run,
                        acts_on=POD)
    return ActionReport(decision, target, Result(outcome, reason, involved))


def test_deleted_pod_gets_a_valid_event_with_its_uid_in_its_namespace(cluster, pod, recorder,
                                                                      respond):
    event = shell_event(cluster.namespace)
    delete, _cordon = respond(event)
    assert delete.result.outcome == Outcome.DONE
    assert recorder.record(event, delete) is True

    (stored,) = cluster.events()
    assert re.fullmatch(r"web-1\.[0-9a-f]{16}", stored.metadata.name)
    assert stored.metadata.namespace == cluster.namespace
    involved = stored.involved_object
    assert (involved.kind, involved.name, involved.namespace, involved.uid,
            involved.api_version) == ("Pod", "web-1", cluster.namespace, pod.metadata.uid, "v1")
    assert (stored.reason, stored.type, stored.action) == ("FalcoResponse", "Warning",
                                                           "delete-pod")
    assert stored.message == ("Falco rule 'Terminal shell in container' matched table rule "
                              "'kill-shells': delete-pod done; Falco event u-1")
    assert (stored.reporting_component, stored.reporting_instance) == (
        "falco-responder", "responder-7d9f-abcde")
    assert stored.source.component == "falco-responder"
    assert stored.count == 1
    assert stored.first_timestamp == stored.last_timestamp == NOW.replace(microsecond=0)
    assert stored.event_time == NOW


def test_cordoned_node_gets_an_event_in_the_default_namespace(cluster, pod, recorder,
                                                              respond):
    node = cluster.core.read_node(pod.spec.node_name)
    event = shell_event(cluster.namespace)
    _delete, cordon = respond(event)
    assert cordon.result.outcome == Outcome.DONE
    assert recorder.record(event, cordon) is True
    (stored,) = cluster.node_events()
    assert stored.metadata.namespace == "default"
    involved = stored.involved_object
    assert (involved.kind, involved.name, involved.namespace, involved.uid) == (
        "Node", node.metadata.name, None, node.metadata.uid)
    assert "cordon-node done" in stored.message
    assert cluster.events() == []


def test_already_gone_pod_is_recorded_by_name(cluster, recorder):
    assert recorder.record(shell_event(cluster.namespace),
                           report(cluster.namespace, Outcome.ALREADY_DONE,
                                  reason="already gone"))
    (stored,) = cluster.events()
    involved = stored.involved_object
    assert (involved.kind, involved.name, involved.namespace, involved.uid) == (
        "Pod", "web-1", cluster.namespace, None)
    assert "delete-pod already gone; Falco event u-1" in stored.message


@pytest.mark.parametrize(("outcome", "dry_run"), [
    (Outcome.DONE, True),
    (Outcome.WOULD_RUN, False),
    (Outcome.SKIPPED, False),
    (Outcome.FAILED, False),
])
def test_nothing_is_recorded_unless_an_action_was_performed(cluster, apiserver, recorder,
                                                            outcome, dry_run):
    involved = ObjectRef("Pod", "web-1", cluster.namespace, "uid-1")
    mark = apiserver.audit_mark()
    assert recorder.record(shell_event(cluster.namespace),
                           report(cluster.namespace, outcome, dry_run, involved)) is False
    assert apiserver.requests_since(mark) == []
    assert cluster.events() == []


def test_event_in_a_namespace_that_does_not_exist_is_refused_and_never_raises(
        cluster, recorder, logs):
    involved = ObjectRef("Pod", "web-1", "no-such-namespace", "uid-1")
    assert recorder.record(shell_event(cluster.namespace),
                           report("no-such-namespace", Outcome.DONE, involved=involved)) is False
    assert 'HTTP 404: namespaces "no-such-namespace" not found' in logs.text


def test_record_all_counts_the_events_created(cluster, pod, recorder, respond):
    event = shell_event(cluster.namespace)
    assert recorder.record_all(event, respond(event)) == 2
    assert [e.action for e in cluster.events() + cluster.node_events()] == [
        "delete-pod", "cordon-node"]
