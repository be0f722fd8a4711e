"""Forged and unverifiable events: a container.id is matched only as Falco sends it, and an
event whose pod cannot be verified never reaches a destructive action unless its table rule
allows it."""

import json
from collections.abc import Mapping
from typing import Any

import pytest

from responder.actions import Action, Outcome, Registry, Result, Target, default_registry
from responder.actions.pods import DeletePod, LabelPod
from responder.app import create_app, shutdown
from responder.errors import TableError
from responder.settings import Settings
from responder.table import load_table, parse_table

from .netcat import CID, FULL_CID, netcat_event

TABLE = """
defaults: {dry_run: false}
rules:
  - name: respond
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true"}}
      - action: delete-pod
      - action: cordon-node
"""
ALLOWING = TABLE.replace("  - name: respond\n", "  - name: respond\n    allow_unverified: true\n")
OTHER_CID = "fedcba987654" + "0" * 52


@pytest.fixture
def cluster(kube):
    kube.api.add_pod("shop", "web", node="node-a", container_ids=(FULL_CID,))
    kube.api.add_pod("shop", "other", node="node-b", container_ids=(OTHER_CID,))
    for name in ("node-a", "node-b", "node-c"):
        kube.api.add_node(name)
    return kube


@pytest.fixture
def send(cluster, tmp_path):
    apps = []

    def post(event, table=TABLE, registry=None):
        registry = registry or default_registry()
        app = create_app(Settings.of(state_dir=str(tmp_path / f"state-{len(apps)}"),
                                  intake="inline"),
                         table=parse_table(table, "test-table.yaml", registry),
                         registry=registry, api_client=cluster.api_client(), start_worker=False)
        apps.append(app)
        reply = app.test_client().post("/", data=json.dumps(event))
        assert reply.status_code == 200, reply.get_json()
        return [(d["action"], d["outcome"], d.get("reason")) for d in reply.get_json()["decisions"]]
    yield post
    for app in apps:
        shutdown(app)


def changes(kube):
    """Requests that changed a pod or a node (audit Events aside)."""
    return [(m[0], m[1]) for m in kube.api.mutations() if not m[1].endswith("/events")]


@pytest.mark.parametrize("forged", [
    "5", "7b7", 9, 123456789012, "0123456789", "0123456789abc", FULL_CID[:63], FULL_CID + "0",
    CID.upper(), f" {CID}", [CID], {"id": CID}, True, "fedcba987654", OTHER_CID,
], ids=["5", "7b7", "number-9", "number-12-digits", "10-hex", "13-hex", "63-hex", "65-hex",
        "upper-case", "leading-space", "array", "object", "boolean", "other-pods-short-id",
        "other-pods-full-id"])
def test_a_forged_container_id_neither_labels_deletes_nor_cordons(cluster, send, forged):
    decisions = send(netcat_event(**{"container.id": forged}), table=ALLOWING)
    assert [(a, o) for a, o, _ in decisions] == [
        ("label-pod", "skipped"), ("delete-pod", "skipped"), ("cordon-node", "skipped")]
    assert all(reason.startswith("container not in pod (container.id ")
               for _, _, reason in decisions)
    assert changes(cluster) == []
    assert ("shop", "web") in cluster.api.pods and ("shop", "other") in cluster.api.pods


@pytest.mark.parametrize("genuine", [CID, FULL_CID], ids=["short-id", "full-id"])
def test_the_ids_falco_sends_verify_the_pod(cluster, send, genuine):
    decisions = send(netcat_event(**{"container.id": genuine}))
    assert [(a, o) for a, o, _ in decisions] == [
        ("label-pod", "done"), ("delete-pod", "done"), ("cordon-node", "done")]
    assert ("shop", "web") not in cluster.api.pods
    assert cluster.api.nodes["node-a"]["spec"]["unschedulable"] is True


def test_a_hostile_container_id_is_quoted_short_in_the_reason(cluster, send):
    decisions = send(netcat_event(**{"container.id": "x" * 100_000}))
    assert all(len(reason) < 300 for _, _, reason in decisions)


@pytest.mark.parametrize("missing", [None, "", "<NA>", "absent"])
def test_a_syscall_event_without_container_id_only_labels(cluster, send, missing):
    event = netcat_event(**{"container.id": missing})
    if missing == "absent":
        del event["output_fields"]["container.id"]
    decisions = send(event)
    assert [(a, o) for a, o, _ in decisions] == [
        ("label-pod", "done"), ("delete-pod", "skipped"), ("cordon-node", "skipped")]
    for _, _, reason in decisions[1:]:
        assert "event has no container.id, so the pod cannot be verified" in reason
        assert "table rule respond may say allow_unverified: true" in reason
    assert changes(cluster) == [("PATCH", "/api/v1/namespaces/shop/pods/web")]


def test_allow_unverified_lets_the_rule_act_on_an_event_without_container_id(cluster, send):
    event = netcat_event()
    del event["output_fields"]["container.id"]
    decisions = send(event, table=ALLOWING)
    assert [(a, o) for a, o, _ in decisions] == [
        ("label-pod", "done"), ("delete-pod", "done"), ("cordon-node", "done")]
    # Still the pod that was read: its uid is the delete's precondition, its node cordoned.
    delete = next(m for m in cluster.api.mutations() if m[0] == "DELETE")
    assert delete[2]["preconditions"]["uid"].startswith("00000000-")
    assert cluster.api.nodes["node-a"]["spec"]["unschedulable"] is True


AUDIT_TABLE = """
defaults: {dry_run: false}
rules:
  - name: delete-privileged-pods
    match: {rules: ["Create Privileged Pod"]}
    actions: [{action: delete-pod}]
"""


def privileged_pod_event():
    return {"uuid": "audit-1", "rule": "Create Privileged Pod", "priority": "Warning",
            "source": "k8s_audit", "hostname": "falco-0",
            "output_fields": {"ka.target.namespace": "shop", "ka.target.resource": "pods",
                              "ka.resp.name": "web", "ka.user.name": "mallory"}}


def test_an_audit_event_deletes_only_where_the_rule_allows_unverified(cluster, send):
    assert send(privileged_pod_event(), table=AUDIT_TABLE) == [
        ("delete-pod", "skipped", "event has no container.id, so the pod cannot be verified; "
         "delete-pod acts only on a verified pod (table rule delete-privileged-pods may say "
         "allow_unverified: true)")]
    assert ("shop", "web") in cluster.api.pods
    allowing = AUDIT_TABLE.replace("actions:", "allow_unverified: true\n    actions:")
    assert send(privileged_pod_event(), table=allowing) == [("delete-pod", "done", None)]
    assert ("shop", "web") not in cluster.api.pods


def test_the_packaged_table_allows_unverified_only_for_audit_pod_deletions():
    table = load_table(None, default_registry())
    assert [r.name for r in table.rules if r.allow_unverified] == ["delete-privileged-pods"]


class EvictPod(Action):
    """An action the table may name that the guardrails know only by its class."""

    name = "evict-pod"
    needs = ("namespace", "pod")
    destructive = True

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        self.core.delete_namespaced_pod(target.pod, target.namespace,
                                        _request_timeout=self.timeout)
        return Result(Outcome.DONE)


def test_destructiveness_is_the_action_class_attribute_not_its_name(cluster, send):
    assert DeletePod.destructive and not LabelPod.destructive
    registry = Registry([EvictPod, LabelPod, DeletePod])
    event = netcat_event()
    del event["output_fields"]["container.id"]
    table = TABLE.replace("      - action: delete-pod\n      - action: cordon-node\n",
                          "      - action: evict-pod\n")
    decisions = send(event, table=table, registry=registry)
    assert [(a, o) for a, o, _ in decisions] == [("label-pod", "done"), ("evict-pod", "skipped")]
    assert ("shop", "web") in cluster.api.pods


@pytest.mark.parametrize(("rule", "problem"), [
    ("allow_unverified: yes-please", "allow_unverified: must be true or false"),
    ("allow_unverified: 1", "allow_unverified: must be true or false"),
])
def test_allow_unverified_must_be_a_boolean(rule, problem):
    text = TABLE.replace("  - name: respond\n", f"  - name: respond\n    {rule}\n")
    with pytest.raises(TableError) as info:
        parse_table(text, "actions.yaml", default_registry())
    assert f"actions.yaml: rule #1 (respond): {problem}" in str(info.value)


def test_allow_unverified_on_a_rule_without_destructive_actions_is_refused():
    text = """
rules:
  - name: mark
    allow_unverified: true
    match: {rules: [x]}
    actions: [{action: label-pod, params: {labels: {a: b}}}]
"""
    with pytest.raises(TableError) as info:
        parse_table(text, "actions.yaml", default_registry())
    assert ("actions.yaml: rule #1 (mark): allow_unverified: has no effect: none of this "
            "rule's actions is destructive (delete-pod, cordon-node, isolate-pod)"
            ) in str(info.value)


def test_an_unverifiable_event_does_not_coalesce_away_the_verified_one(cluster, make_app,
                                                                       make_table):
    app = make_app(make_table(TABLE), api_client=cluster.api_client(), intake="inline")
    client = app.test_client()
    unverifiable = netcat_event("no-id")
    del unverifiable["output_fields"]["container.id"]
    first = client.post("/", data=json.dumps(unverifiable)).get_json()["decisions"]
    assert [d["outcome"] for d in first] == ["done", "skipped", "skipped"]
    second = client.post("/", data=json.dumps(netcat_event("genuine"))).get_json()["decisions"]
    assert [d["outcome"] for d in second] == ["done", "done", "done"]
    assert ("shop", "web") not in cluster.api.pods
