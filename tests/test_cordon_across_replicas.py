"""The cordon limits hold across replicas: two responders sharing one Redis (the shipped
manifests run two) never cordon more nodes than `max_cordoned_nodes`, nor the last
schedulable node, when alerts on different nodes reach both at once. Real kube-apiserver,
real redis-server; the node list answers slowly, so both replicas would count before
either cordons unless something serialises them."""

import json
import threading
import time
from urllib.parse import urlparse

import pytest

from responder.retry import is_retryable
from responder.shared import Contended

from .netcat import FULL_CID, NETCAT, netcat_event
from .redisserver import RedisServer

pytestmark = pytest.mark.slow

TABLE = f"""
defaults: {{dry_run: false, max_cordoned_nodes: %d}}
rules:
  - name: escapes
    match: {{rules: ["{NETCAT}"]}}
    actions: [{{action: cordon-node}}]
"""
#: How long a replica waits between reading the node list and cordoning.
COUNTED_TO_CORDON = 0.3


@pytest.fixture
def redis_url():
    with RedisServer() as server:
        yield server.url


def slow_node_lists(api_client, seconds: float):
    """The client's node lists come back `seconds` late: a replica counts the nodes, then
    takes that long to cordon, the window in which another replica counts too."""
    request = api_client.rest_client.request

    def slowed(method, url, *args, **kwargs):
        answer = request(method, url, *args, **kwargs)
        if method == "GET" and urlparse(url).path == "/api/v1/nodes":
            time.sleep(seconds)
        return answer
    api_client.rest_client.request = slowed
    return api_client


def replicas(apiserver, make_app, make_table, limit, count=2, **settings):
    """`count` apps (separate replicas unless `settings` says otherwise), inline intake."""
    return [make_app(make_table(TABLE % limit),
                     api_client=slow_node_lists(apiserver.api_client(), COUNTED_TO_CORDON),
                     intake="inline", **settings) for _ in range(count)]


def at_once(apps, cluster, pods) -> dict[str, dict]:
    """Post one event per pod, each to its own app, all at the same moment: the decision
    for each pod."""
    decisions: dict[str, dict] = {}
    start = threading.Barrier(len(apps))

    def post(app, pod):
        event = netcat_event(f"e-{pod}", pod=pod, namespace=cluster.namespace,
                             hostname="falco-host")
        start.wait()
        reply = app.test_client().post("/", data=json.dumps(event))
        (decisions[pod],) = reply.get_json()["decisions"]

    threads = [threading.Thread(target=post, args=(app, pod)) for app, pod in zip(apps, pods,
                                                                                   strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return decisions


def cordoned(cluster) -> list[str]:
    return [n for n in cluster.nodes if cluster.core.read_node(n).spec.unschedulable]


def add_pods(cluster, nodes) -> list[str]:
    for i, node in enumerate(nodes):
        cluster.add_pod(f"web-{i}", node=node, container_ids=(FULL_CID,))
    return [f"web-{i}" for i in range(len(nodes))]


def test_two_replicas_sharing_redis_cordon_at_most_the_limit(
        cluster, apiserver, make_app, make_table, redis_url):
    nodes = [cluster.add_node(f"node-{c}").metadata.name for c in "abc"]
    apps = replicas(apiserver, make_app, make_table, 1, redis_url=redis_url)
    decisions = at_once(apps, cluster, add_pods(cluster, nodes[:2]))
    assert len(cordoned(cluster)) == 1
    assert sorted((d["outcome"], d.get("reason")) for d in decisions.values()) == [
        ("done", None),
        ("skipped", "cordon limit reached (1 of at most 1 nodes already cordoned)")]


def test_two_replicas_sharing_redis_never_cordon_the_last_schedulable_node(
        cluster, apiserver, make_app, make_table, redis_url):
    nodes = [cluster.add_node(f"node-{c}").metadata.name for c in "ab"]
    apps = replicas(apiserver, make_app, make_table, 5, redis_url=redis_url)
    decisions = at_once(apps, cluster, add_pods(cluster, nodes))
    assert len(cordoned(cluster)) == 1
    assert sorted((d["outcome"], d.get("reason")) for d in decisions.values()) == [
        ("done", None), ("skipped", "would cordon the last schedulable node")]


def test_two_processes_of_one_replica_share_the_limit_through_its_sqlite_state(
        cluster, apiserver, make_app, make_table, tmp_path):
    """Without Redis: gunicorn workers of one replica share the state directory."""
    nodes = [cluster.add_node(f"node-{c}").metadata.name for c in "abc"]
    apps = replicas(apiserver, make_app, make_table, 1, state_dir=str(tmp_path / "state"))
    at_once(apps, cluster, add_pods(cluster, nodes[:2]))
    assert len(cordoned(cluster)) == 1


def test_a_lock_held_too_long_fails_the_cordon_for_a_later_retry(
        cluster, apiserver, make_app, make_table, redis_url):
    nodes = [cluster.add_node(f"node-{c}").metadata.name for c in "ab"]
    (app,) = replicas(apiserver, make_app, make_table, 1, count=1, redis_url=redis_url,
                      kube_timeout=0.5)
    shared = app.extensions["responder"].executor.guardrails.shared
    assert shared.try_lock("cordon-node", 30.0)  # another replica, hung mid-cordon
    (decision,) = at_once([app], cluster, add_pods(cluster, nodes[:1])).values()
    assert (decision["outcome"], decision["reason"]) == (
        "failed", "guardrail check failed: Contended: the shared lock 'cordon-node' stayed "
        "taken for 0.5 s")
    assert cordoned(cluster) == []
    assert is_retryable(Contended("x"))
