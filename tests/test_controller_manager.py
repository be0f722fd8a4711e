"""With kube-controller-manager running, a ReplicaSet's pod deleted by the responder is
replaced by its controller: the response removes the compromised pod, not the service."""

import json
import time

import pytest

from .netcat import FULL_CID, delete_pod_table, netcat_event

pytestmark = pytest.mark.slow


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def pods_of(cluster, owner_uid: str) -> list:
    pods = cluster.core.list_namespaced_pod(cluster.namespace).items
    return [p for p in pods if p.metadata.deletion_timestamp is None and any(
        o.uid == owner_uid for o in p.metadata.owner_references or [])]


def test_deleted_replicaset_pod_is_replaced_by_its_controller(cluster, controller_manager,
                                                              apiserver, make_app, make_table):
    node = cluster.add_node("node-a").metadata.name
    cluster.add_node("node-b")
    pod = cluster.add_pod("web", node=node, container_ids=(FULL_CID,), owner="ReplicaSet")
    owner = pod.metadata.owner_references[0]
    # Once the controller has seen the pod, the ReplicaSet has the one replica it wants.
    wait_for(lambda: (cluster.apps.read_namespaced_replica_set(owner.name, cluster.namespace)
                      .status.replicas == 1 and len(pods_of(cluster, owner.uid)) == 1),
             what="the ReplicaSet to count its pod")
    app = make_app(make_table(delete_pod_table()), api_client=apiserver.api_client(),
                   intake="inline")
    reply = app.test_client().post("/", data=json.dumps(netcat_event(
        namespace=cluster.namespace)), content_type="application/json")
    assert [d["outcome"] for d in reply.get_json()["decisions"]] == ["done"]

    (replacement,) = wait_for(lambda: [p for p in pods_of(cluster, owner.uid)
                                       if p.metadata.uid != pod.metadata.uid],
                              what="a replacement pod")
    assert replacement.metadata.name.startswith(f"{owner.name}-")
    assert cluster.pod("web") is None
