"""Undoing an old isolation never breaks a newer one: when the policy an event created is gone
and a later event isolated the pod again (a policy of the same name, another uid), undoing
the old event leaves the new policy and the label it selects the pod by. On the real
kube-apiserver."""

from __future__ import annotations

import pytest
from kubernetes import client

from responder.actions.isolation import ISOLATED

from .netcat import NETCAT, netcat_event
from .test_apiserver_undo import TOKEN, node, respond, said, undo, web

pytestmark = pytest.mark.slow
node, web = node, web  # the undo tests' fixtures: pod `web` of a ReplicaSet on node-a
ISOLATE = """
defaults: {dry_run: false, coalesce_seconds: 0}
rules:
  - name: isolate
    match: {rules: ["NETCAT"]}
    actions:
      - action: isolate-pod
""".replace("NETCAT", NETCAT)


@pytest.fixture
def app(apiserver, make_app, make_table):
    return make_app(make_table(ISOLATE), api_client=apiserver.api_client(), auth_token=TOKEN)


def test_undoing_an_old_isolation_leaves_a_newer_one_whole(cluster, web, app):
    networking = client.NetworkingV1Api(cluster.core.api_client)
    assert respond(app, netcat_event("u-1", namespace=cluster.namespace)) == [
        ("isolate-pod", "done")]
    # Someone deletes the policy (to debug, say); a new alert isolates the pod again.
    networking.delete_namespaced_network_policy("isolate-web", cluster.namespace)
    assert respond(app, netcat_event("u-2", namespace=cluster.namespace)) == [
        ("isolate-pod", "done")]
    newer = networking.read_namespaced_network_policy("isolate-web", cluster.namespace)

    (action, outcome, reason) = said(undo(app, "u-1").get_json())[0]
    assert action == "isolate-pod" and outcome != "undone", reason
    assert "another one now" in reason
    kept = networking.read_namespaced_network_policy("isolate-web", cluster.namespace)
    assert kept.metadata.uid == newer.metadata.uid
    # The newer policy still selects the pod: its label stays.
    assert ISOLATED in (cluster.pod("web").metadata.labels or {})

    # Undoing the newer event puts the pod back.
    assert said(undo(app, "u-2").get_json())[0][:2] == ("isolate-pod", "undone")
    assert ISOLATED not in (cluster.pod("web").metadata.labels or {})
