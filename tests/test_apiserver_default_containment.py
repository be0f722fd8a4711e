"""The packaged default table, armed, on a reverse shell against a real kube-apiserver:
evidence first, then isolation (detached from a ReplicaSet; in place for other owners),
then the label; the pod is kept. A failing evidence store does not hold containment back."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from responder.actions.isolation import ALREADY_BY_EARLIER, ISOLATED
from responder.table import DEFAULT_TABLE

from .netcat import FULL_CID, netcat_event

pytestmark = pytest.mark.slow


@pytest.fixture
def armed_default(make_table):
    text = resources.files("responder").joinpath(DEFAULT_TABLE).read_text("utf-8")
    assert "\n  dry_run: true\n" in text
    return make_table(text.replace("\n  dry_run: true\n", "\n  dry_run: false\n", 1))


@pytest.fixture
def respond(cluster, apiserver, make_app, armed_default, tmp_path):
    def post(pod: str = "web", **settings) -> list[tuple[str, str, str | None]]:
        app = make_app(armed_default, api_client=apiserver.api_client(), intake="inline",
                       state_dir=str(tmp_path / "state"), **settings)
        reply = app.test_client().post("/", data=json.dumps(
            netcat_event(pod=pod, namespace=cluster.namespace)),
            content_type="application/json")
        assert reply.status_code == 200, reply.get_json()
        assert reply.get_json()["matched"] == ["contain-reverse-shells"]
        return [(d["action"], d["outcome"], d.get("reason"))
                for d in reply.get_json()["decisions"]]
    return post


@pytest.fixture
def node(cluster):
    return cluster.add_node("node-a").metadata.name


def test_a_replicaset_pod_is_captured_isolated_detached_and_labelled_not_deleted(
        cluster, node, respond):
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    assert respond() == [
        ("capture-evidence", "done", "partial bundle: logs/c0.log unreadable (errors.json)"),
        ("isolate-pod", "done", None),
        ("isolate-pod", "already-done", ALREADY_BY_EARLIER),
        ("label-pod", "done", None)]
    labels = cluster.pod("web").metadata.labels
    # Detached (no `app: web` for the ReplicaSet any more), isolated, labelled, still there.
    assert labels == {ISOLATED: "web", "quarantine": "true", "falco-response": "reverse-shell"}


def test_the_second_isolation_asks_the_api_nothing(cluster, node, apiserver, respond):
    """What the first isolate-pod recorded answers the second: its 3 requests (label PATCH,
    policy CREATE 409, policy GET) are not taken from the containment budget."""
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    mark = apiserver.audit_mark()
    assert [o for _, o, _ in respond()] == ["done", "done", "already-done", "done"]
    seen = [(r.verb, r.path.split(f"/namespaces/{cluster.namespace}/")[-1])
            for r in apiserver.requests_since(mark)]
    assert [s for s in seen if s[1].startswith("networkpolicies")] == [
        ("create", "networkpolicies")]
    # Pod PATCHes: the isolation label, the detach, label-pod; nothing for the second.
    assert seen.count(("patch", "pods/web")) == 3
    # Pod GETs: the executor's before the plan, whose pod the capture's manifest and detach's
    # labels come from (each read it again: 2 requests of the containment budget), and
    # label-pod's, which keeps the labels as they are by then for its undo.
    assert [s for s in seen if s[1] == "pods/web"] == [
        ("get", "pods/web"), ("patch", "pods/web"), ("patch", "pods/web"), ("get", "pods/web"),
        ("patch", "pods/web")]


def test_a_capture_after_a_label_records_the_pod_as_labelled(cluster, node, apiserver,
                                                            make_app, make_table, tmp_path):
    """The pod read before the plan is stale once an earlier action changed the pod: the
    capture then reads it again."""
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    table = make_table("""
defaults: {dry_run: false}
rules:
  - name: label-then-capture
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true"}}
      - action: capture-evidence
""")
    app = make_app(table, api_client=apiserver.api_client(), intake="inline",
                   state_dir=str(tmp_path / "state"))
    mark = apiserver.audit_mark()
    reply = app.test_client().post("/", data=json.dumps(netcat_event(
        namespace=cluster.namespace)), content_type="application/json").get_json()
    capture = reply["decisions"][1]
    pod = json.loads((tmp_path / "state" / "evidence" / capture["details"]["key"]
                      / "pod.json").read_text())
    assert pod["metadata"]["labels"]["quarantine"] == "true"
    seen = [(r.verb, r.path.split(f"/namespaces/{cluster.namespace}/")[-1])
            for r in apiserver.requests_since(mark)]
    # The executor's, label-pod's own, and the capture's after the patch.
    assert [s for s in seen if s[1] == "pods/web"] == [
        ("get", "pods/web"), ("get", "pods/web"), ("patch", "pods/web"), ("get", "pods/web")]


def test_a_daemonset_pod_is_isolated_in_place(cluster, node, respond):
    cluster.add_pod("agent", node=node, container_ids=(FULL_CID,), owner="DaemonSet")
    assert respond("agent") == [
        ("capture-evidence", "done", "partial bundle: logs/c0.log unreadable (errors.json)"),
        ("isolate-pod", "skipped", "detach needs a pod owned by a ReplicaSet (owner: "
         "DaemonSet); nothing would start a replacement"),
        ("isolate-pod", "done", None),
        ("label-pod", "done", None)]
    assert cluster.pod("agent").metadata.labels["app"] == "agent"  # not detached


def test_a_failing_store_does_not_hold_containment_back(cluster, node, respond, tmp_path):
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    (tmp_path / "blocker").write_text("")
    decisions = respond(evidence_url=(tmp_path / "blocker" / "ev").as_uri())
    assert [(a, o) for a, o, _ in decisions] == [
        ("capture-evidence", "failed"), ("isolate-pod", "done"),
        ("isolate-pod", "already-done"), ("label-pod", "done")]
    assert cluster.pod("web").metadata.labels[ISOLATED] == "web"


def test_undo_of_the_default_containment_takes_the_isolation_and_labels_back(
        cluster, node, apiserver, make_app, armed_default, tmp_path):
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    app = make_app(armed_default, api_client=apiserver.api_client(),
                   state_dir=str(tmp_path / "state"))
    client = app.test_client()
    client.post("/", data=json.dumps(netcat_event(namespace=cluster.namespace)),
                content_type="application/json")
    assert app.extensions["worker"].run_pending() == 1
    reply = client.post("/events/u-1/undo", data=json.dumps({"by": "alice"}),
                        content_type="application/json")
    assert reply.status_code == 200, reply.get_json()
    assert [(a["action"], a["outcome"]) for a in reply.get_json()["actions"]] == [
        ("capture-evidence", "not-undone"), ("isolate-pod", "undone"),
        # The second isolate-pod found the first's policy: nothing of its own to take back.
        ("isolate-pod", "already-undone"), ("label-pod", "undone")]
    # Isolation and labels gone; detached, it stays detached; the evidence stays stored.
    assert not cluster.pod("web").metadata.labels
    assert client.get("/events/u-1/evidence").status_code == 200
