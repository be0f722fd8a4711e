"""Undoing a cordon never lifts a cordon that is not the responder's: once someone has
uncordoned the node and cordoned it again (kubectl, for maintenance), the Undo button still on
the Slack message must leave it cordoned. On the real kube-apiserver, which records who set
`spec.unschedulable` last (managedFields)."""

from __future__ import annotations

import pytest
from kubernetes import client

from .netcat import netcat_event
from .test_apiserver_undo import CONTAIN, TOKEN, respond, said, undo, web

pytestmark = pytest.mark.slow
web = web  # the undo tests' pod `web`, here on a node as a kubelet registers it


def kubelet_node(cluster, name: str) -> str:
    """A Ready node created as a kubelet creates it (with labels, under its field manager):
    the API server then tracks who sets which field (a node created bare has no
    managedFields, and updates do not start them)."""
    full = f"{cluster.namespace}-{name}"
    cluster.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(
        name=full, labels={"kubernetes.io/hostname": full})), field_manager="kubelet")
    cluster.nodes.append(full)
    cluster.core.patch_node_status(full, {"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady"}]}}, field_manager="kubelet")
    return full


@pytest.fixture
def node(cluster):
    """node-a for the pod; node-b keeps node-a from being the last schedulable node."""
    kubelet_node(cluster, "node-b")
    return kubelet_node(cluster, "node-a")


@pytest.fixture
def app(apiserver, make_app, make_table):
    return make_app(make_table(CONTAIN), api_client=apiserver.api_client(), auth_token=TOKEN)


def kubectl(cluster, node_name: str, unschedulable: bool) -> None:
    """`kubectl cordon` / `uncordon`: a merge patch under kubectl's field manager."""
    cluster.core.patch_node(node_name, {"spec": {"unschedulable": unschedulable}},
                            field_manager="kubectl-cordon")


def test_a_node_cordoned_again_by_someone_since_stays_cordoned(cluster, node, web, app):
    assert respond(app, netcat_event(namespace=cluster.namespace))[2] == ("cordon-node", "done")
    kubectl(cluster, node, False)
    kubectl(cluster, node, True)  # an operator's cordon now, for maintenance
    answer = undo(app, "u-1").get_json()
    (action, outcome, reason) = said(answer)[2]
    assert (action, outcome) == ("cordon-node", "not-undone")
    assert "kubectl-cordon" in reason and "left cordoned" in reason
    assert cluster.core.read_node(node).spec.unschedulable is True


def test_our_own_cordon_is_still_undone(cluster, node, web, app):
    respond(app, netcat_event(namespace=cluster.namespace))
    kubectl(cluster, node, True)  # cordoning a cordoned node changes nothing, owns nothing
    assert said(undo(app, "u-1").get_json())[2] == ("cordon-node", "undone", None)
    assert not cluster.core.read_node(node).spec.unschedulable
