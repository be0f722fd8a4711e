"""Planning: which objects an event points at, and why an action would be skipped."""

import textwrap

import pytest

from responder.actions import Target, default_registry
from responder.decisions import plan_response, resolve_target
from responder.events import event_from_dict
from responder.table import parse_table

from .conftest import recorded_events

TABLE = """
defaults: {dry_run: true, protected_namespaces: [kube-system]}
rules:
  - name: armed
    match: {rules: [Armed]}
    dry_run: false
    actions: [{action: delete-pod}, {action: cordon-node}]
  - name: global
    match: {rules: [Global]}
    actions: [{action: delete-pod}]
"""


def plan(rule="Armed", fields=None, own_namespace=None, force_dry_run=False, text=TABLE, **top):
    table = parse_table(textwrap.dedent(text), "t.yaml", default_registry())
    event = event_from_dict({"rule": rule, "priority": "Warning", **top,
                             "output_fields": fields if fields is not None else
                             {"k8s.ns.name": "shop", "k8s.pod.name": "web",
                              "container.id": "0123456789ab"}})
    return plan_response(table, default_registry(), event, own_namespace, force_dry_run)


def test_syscall_target_comes_from_k8s_fields_and_hostname():
    event = event_from_dict({"rule": "r", "priority": "Notice", "hostname": "node-7",
                             "output_fields": {"k8s.ns.name": "shop", "k8s.pod.name": "web",
                                               "container.id": "0123456789ab"}})
    assert resolve_target(event) == Target("shop", "web", "node-7", "0123456789ab")


def test_audit_target_uses_target_name_for_pods_and_ignores_falco_hostname():
    event = event_from_dict(recorded_events()[4])  # Attach/Exec Pod
    assert resolve_target(event) == Target("hello-app", "nginx-676b6c5bbc-4xc6t", None, None)


def test_audit_target_uses_resp_name_for_created_pods():
    event = event_from_dict({"rule": "Create Privileged Pod", "priority": "Warning",
                             "source": "k8s_audit",
                             "output_fields": {"ka.resp.name": "evil", "ka.target.name": None,
                                               "ka.target.namespace": "ns",
                                               "ka.target.resource": "pods"}})
    assert resolve_target(event) == Target("ns", "evil")


def test_audit_event_on_another_resource_names_no_pod():
    event = event_from_dict(recorded_events()[6])  # Disallowed K8s User on a rolebinding
    assert resolve_target(event).pod is None


def test_host_process_never_targets_a_pod():
    target = resolve_target(event_from_dict(
        {"rule": "r", "priority": "Notice", "hostname": "n1",
         "output_fields": {"container.id": "host", "k8s.pod.name": "stale", "k8s.ns.name": "x"}}))
    assert target == Target(None, None, "n1", "host")


def test_rule_dry_run_overrides_global_default():
    assert [d.dry_run for d in plan("Armed").decisions] == [False, False]
    assert [d.dry_run for d in plan("Global").decisions] == [True]


def test_forced_dry_run_wins_over_the_table():
    assert [d.dry_run for d in plan("Armed", force_dry_run=True).decisions] == [True, True]


@pytest.mark.parametrize("namespace", ["kube-system", "falco-responder"])
def test_protected_and_own_namespaces_are_never_acted_on(namespace):
    decisions = plan(fields={"k8s.ns.name": namespace, "k8s.pod.name": "p"},
                     own_namespace="falco-responder").decisions
    assert {d.skip_reason for d in decisions} == {f"namespace {namespace} is protected"}


@pytest.mark.parametrize(("fields", "reason"), [
    ({"k8s.ns.name": "shop"}, "event names no pod"),
    ({"k8s.ns.name": "shop", "k8s.pod.name": "<NA>"}, "event names no pod"),
    ({"k8s.ns.name": "", "k8s.pod.name": "web"}, "event names no namespace"),
    ({"container.id": "host"}, "event comes from a host process"),
])
def test_missing_target_parts_give_a_skip_reason(fields, reason):
    first = plan(fields=fields).decisions[0]
    assert first.action == "delete-pod"
    assert first.skip_reason.startswith(reason)


def test_cordon_without_pod_or_hostname_is_skipped():
    decisions = plan(fields={"container.id": "abc"}).decisions
    assert decisions[1].skip_reason == "event names no node (no pod to look up and no hostname)"


def test_unmatched_event_has_an_empty_plan():
    result = plan("Something else")
    assert result.matched == () and result.decisions == ()
