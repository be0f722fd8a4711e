"""delete-pod on a pod already being deleted (Terminating: deletionTimestamp set, no kubelet
to finish it), against a real kube-apiserver: it is already done, with no second DELETE
and no second place in the deletion limit, unless the DELETE would shorten the grace."""

import json

import pytest

from .netcat import FULL_CID, NETCAT, netcat_event

pytestmark = pytest.mark.slow


def table(params: str = "{}", per_minute: int = 10) -> str:
    return f"""
defaults: {{dry_run: false, max_pod_deletions_per_minute: {per_minute}}}
rules:
  - name: respond
    match: {{rules: ["{NETCAT}"]}}
    actions: [{{action: delete-pod, params: {params}}}]
"""


@pytest.fixture
def terminating(cluster):
    """A pod deleted with 300 s of grace: without a kubelet it stays Terminating."""
    node = cluster.add_node("node-a").metadata.name
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    cluster.core.delete_namespaced_pod("web", cluster.namespace, grace_period_seconds=300)
    pod = cluster.pod("web")
    assert pod.metadata.deletion_timestamp is not None
    return pod


def post(apiserver, make_app, make_table, text, event):
    app = make_app(make_table(text), api_client=apiserver.api_client(), intake="inline")
    reply = app.test_client().post("/", data=json.dumps(event))
    (decision,) = reply.get_json()["decisions"]
    return decision


def deletes(requests):
    return [r.path for r in requests if r.verb == "delete"]


def test_a_terminating_pod_is_already_being_deleted_without_a_second_delete(
        cluster, apiserver, make_app, make_table, terminating):
    mark = apiserver.audit_mark()
    decision = post(apiserver, make_app, make_table, table(per_minute=1),
                    netcat_event(namespace=cluster.namespace))
    assert (decision["outcome"], decision["reason"]) == ("already-done", "already being deleted")
    assert deletes(apiserver.requests_since(mark)) == []
    # It took no place in the limit of 1: another pod may still be deleted.
    cluster.add_pod("api", node=terminating.spec.node_name, container_ids=(FULL_CID,))
    decision = post(apiserver, make_app, make_table, table(per_minute=1),
                    netcat_event("u-2", pod="api", namespace=cluster.namespace))
    assert decision["outcome"] == "done"


def test_a_delete_that_shortens_the_grace_still_runs(cluster, apiserver, make_app, make_table,
                                                     terminating):
    decision = post(apiserver, make_app, make_table, table("{grace_period_seconds: 0}"),
                    netcat_event(namespace=cluster.namespace))
    assert decision["outcome"] == "done"
    assert cluster.pod("web") is None


def test_a_delete_with_no_shorter_grace_is_already_done(cluster, apiserver, make_app,
                                                         make_table, terminating):
    mark = apiserver.audit_mark()
    decision = post(apiserver, make_app, make_table, table("{grace_period_seconds: 600}"),
                    netcat_event(namespace=cluster.namespace))
    assert decision["outcome"] == "already-done"
    assert deletes(apiserver.requests_since(mark)) == []
