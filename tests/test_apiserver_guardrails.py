"""Guardrails that read the cluster, against a real kube-apiserver: the event's container must
be in the pod, a replaced pod is left alone, DaemonSet and standalone pods, the last
schedulable node and the cordon limit."""

import json
import threading

import pytest

from .netcat import CID, FULL_CID, NETCAT

pytestmark = pytest.mark.slow

TABLE = f"""
defaults: {{dry_run: false, max_cordoned_nodes: 1}}
rules:
  - name: respond
    match: {{rules: ["{NETCAT}"]}}
    actions: [{{action: delete-pod}}, {{action: cordon-node}}]
"""
DELETE_ONLY = f"""
defaults: {{dry_run: false}}
rules:
  - name: respond
    match: {{rules: ["{NETCAT}"]}}
    actions: [{{action: delete-pod, params: {{grace_period_seconds: 0}}}}]
"""
CORDON_ONLY = TABLE.replace("[{action: delete-pod}, {action: cordon-node}]",
                            "[{action: cordon-node}]")
OTHER_CID = "5e1d7c0a9b3f"  # a container of an earlier pod of the same name


def event(namespace, uuid="u-1", container=CID, pod="web", hostname="falco-host"):
    return {"uuid": uuid, "rule": NETCAT, "priority": "Warning", "source": "syscall",
            "hostname": hostname,
            "output_fields": {"k8s.ns.name": namespace, "k8s.pod.name": pod,
                              "container.id": container}}


@pytest.fixture
def nodes(cluster):
    """Three Ready nodes; returns their names (a, b, c)."""
    return [cluster.add_node(f"node-{c}").metadata.name for c in "abc"]


@pytest.fixture
def web(cluster, nodes):
    return cluster.add_pod("web", node=nodes[0], container_ids=(FULL_CID,))


@pytest.fixture
def inline(apiserver, make_app, make_table):
    """Post events to an inline app with `table`; each reply's decisions."""
    def post(table, *events):
        app = make_app(make_table(table), api_client=apiserver.api_client(), intake="inline")
        test_client = app.test_client()
        replies = [test_client.post("/", data=json.dumps(e), content_type="application/json")
                   for e in events]
        return [r.get_json()["decisions"] for r in replies]
    return post


@pytest.fixture
def queued(apiserver, make_app, make_table):
    """Queue events on an app with TABLE, run its worker, return each event's status."""
    app = make_app(make_table(TABLE), api_client=apiserver.api_client())

    def send(*events):
        test_client = app.test_client()
        for e in events:
            assert test_client.post("/", data=json.dumps(e)).status_code == 202
        app.extensions["worker"].run_pending()
        return [test_client.get(f"/events/{e['uuid']}").get_json() for e in events]
    return send


def outcomes(decisions):
    return [(d["action"], d["outcome"]) for d in decisions]


def mutations(requests):
    return [(r.verb, r.path) for r in requests if r.verb not in ("get", "list")]


def test_stale_event_neither_deletes_nor_cordons_the_node_of_a_recreated_pod(
        cluster, apiserver, web, queued):
    mark = apiserver.audit_mark()
    (status,) = queued(event(cluster.namespace, "stale", container=OTHER_CID))
    assert outcomes(status["decisions"]) == [("delete-pod", "skipped"),
                                             ("cordon-node", "skipped")]
    assert all("container not in pod" in d["reason"] for d in status["decisions"])
    assert mutations(apiserver.requests_since(mark)) == []
    assert cluster.pod("web").metadata.deletion_timestamp is None


def test_pod_recreated_under_its_name_since_the_event_is_left_alone(cluster, apiserver, nodes,
                                                                    inline):
    """A StatefulSet-style replacement: same name, new uid, new containers."""
    old = cluster.add_pod("web", node=nodes[0], container_ids=(OTHER_CID + "0" * 52,))
    cluster.core.delete_namespaced_pod("web", cluster.namespace, grace_period_seconds=0)
    new = cluster.add_pod("web", node=nodes[1], container_ids=(FULL_CID,), owner=None)
    assert new.metadata.uid != old.metadata.uid
    mark = apiserver.audit_mark()
    (decisions,) = inline(TABLE, event(cluster.namespace, container=OTHER_CID))
    assert {d["outcome"] for d in decisions} == {"skipped"}
    assert mutations(apiserver.requests_since(mark)) == []
    assert cluster.pod("web").metadata.uid == new.metadata.uid


def test_event_naming_one_of_the_pods_containers_acts(cluster, web, inline):
    (decisions,) = inline(TABLE, event(cluster.namespace))
    assert outcomes(decisions) == [("delete-pod", "done"), ("cordon-node", "done")]


def test_a_forged_event_does_not_coalesce_away_the_genuine_one(cluster, web, queued):
    forged, genuine = queued(event(cluster.namespace, "forged", container="f0f0f0f0f0f0"),
                             event(cluster.namespace, "genuine"))
    assert {o for _, o in outcomes(forged["decisions"])} == {"skipped"}
    assert outcomes(genuine["decisions"]) == [("delete-pod", "done"), ("cordon-node", "done")]


def test_a_dry_run_event_does_not_coalesce_away_a_live_one(cluster, apiserver, web, make_app,
                                                           make_table):
    app = make_app(make_table(TABLE.replace("dry_run: false", "dry_run: true")),
                   api_client=apiserver.api_client())
    test_client = app.test_client()
    test_client.post("/", data=json.dumps(event(cluster.namespace, "dry")))
    app.extensions["worker"].run_pending()
    app.extensions["responder"].table = make_table(TABLE)  # the operator arms the table
    test_client.post("/", data=json.dumps(event(cluster.namespace, "live")))
    app.extensions["worker"].run_pending()
    status = test_client.get("/events/live").get_json()
    assert outcomes(status["decisions"])[0] == ("delete-pod", "done")


def test_daemonset_pod_is_not_deleted_unless_allowed(cluster, apiserver, nodes, inline):
    cluster.add_pod("agent", node=nodes[0], container_ids=(FULL_CID,), owner="DaemonSet")
    mark = apiserver.audit_mark()
    (decisions,) = inline(DELETE_ONLY, event(cluster.namespace, pod="agent"))
    assert (decisions[0]["outcome"], decisions[0]["reason"]) == (
        "skipped", "pod belongs to a DaemonSet (set allow_daemonset: true to delete it)")
    assert mutations(apiserver.requests_since(mark)) == []

    allowed = DELETE_ONLY.replace("grace_period_seconds: 0", "grace_period_seconds: 0, "
                                  "allow_daemonset: true")
    (decisions,) = inline(allowed, event(cluster.namespace, "u-2", pod="agent"))
    assert outcomes(decisions) == [("delete-pod", "done")]
    assert cluster.pod("agent") is None


def test_replicaset_pod_is_deleted(cluster, nodes, inline):
    pod = cluster.add_pod("web", node=nodes[0], container_ids=(FULL_CID,), owner="ReplicaSet")
    assert pod.metadata.owner_references[0].kind == "ReplicaSet"
    (decisions,) = inline(DELETE_ONLY, event(cluster.namespace))
    assert outcomes(decisions) == [("delete-pod", "done")]


def test_standalone_pod_is_skipped_when_the_table_says_so(cluster, nodes, inline):
    cluster.add_pod("lonely", node=nodes[0], container_ids=(FULL_CID,), owner=None)
    careful = DELETE_ONLY.replace("dry_run: false", "dry_run: false, skip_standalone_pods: true")
    (decisions,) = inline(careful, event(cluster.namespace, pod="lonely"))
    assert (decisions[0]["outcome"], decisions[0]["reason"]) == (
        "skipped", "standalone pod: nothing would recreate it (skip_standalone_pods is on)")
    assert cluster.pod("lonely") is not None
    # The default deletes it: the table's author chose to.
    (decisions,) = inline(DELETE_ONLY, event(cluster.namespace, "u-2", pod="lonely"))
    assert outcomes(decisions) == [("delete-pod", "done")]


def test_last_schedulable_node_is_never_cordoned(cluster, apiserver, inline):
    only = cluster.add_node("only").metadata.name
    cluster.add_pod("web", node=only, container_ids=(FULL_CID,))
    (decisions,) = inline(CORDON_ONLY, event(cluster.namespace))
    assert (decisions[0]["outcome"], decisions[0]["reason"]) == (
        "skipped", "would cordon the last schedulable node")
    assert not cluster.core.read_node(only).spec.unschedulable


def test_cordon_stops_at_the_limit_counting_existing_cordons(cluster, inline):
    cluster.add_node("cordoned", unschedulable=True)
    target = cluster.add_node("target").metadata.name
    cluster.add_node("spare")
    cluster.add_pod("web", node=target, container_ids=(FULL_CID,))
    (decisions,) = inline(CORDON_ONLY, event(cluster.namespace))
    assert (decisions[0]["outcome"], decisions[0]["reason"]) == (
        "skipped", "cordon limit reached (1 of at most 1 nodes already cordoned)")
    assert not cluster.core.read_node(target).spec.unschedulable


def test_concurrent_cordons_respect_the_limit(cluster, apiserver, nodes, make_app, make_table):
    # Host events name their node by hostname alone: the rule must allow that.
    table = TABLE.replace("    actions:", "    allow_unverified: true\n    actions:")
    app = make_app(make_table(table), api_client=apiserver.api_client(), intake="inline")
    hosts = [event(cluster.namespace, f"h{i}", container="host", pod=None, hostname=node)
             for i, node in enumerate(nodes)]
    threads = [threading.Thread(target=app.test_client().post, args=("/",),
                                kwargs={"data": json.dumps(h)}) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cordoned = [n for n in nodes if cluster.core.read_node(n).spec.unschedulable]
    assert len(cordoned) == 1
