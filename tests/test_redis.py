"""Scale-out: state shared through a real redis-server, and two replicas that act once."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from responder.shared import RedisState, allow_in_window

from .netcat import FULL_CID, delete_pod_table, netcat_event


@pytest.fixture
def redis_url(redis_server):
    """The module's server, emptied before each test."""
    state = RedisState(redis_server.url)
    state.redis.flushdb()
    state.close()
    return redis_server.url


@pytest.fixture
def states(redis_url):
    """Two clients of the same server, as two replicas would hold."""
    made = [RedisState(redis_url), RedisState(redis_url)]
    yield made
    for state in made:
        state.close()


def concurrently(calls):
    """Run the callables at once, one thread each; their results in order."""
    start = threading.Barrier(len(calls))

    def run(call):
        start.wait(10)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


# --- RedisState against the real server ---------------------------------------------------
def test_redis_server_answers_ping(redis_server):
    assert redis_server.ping()


def test_first_seen_is_true_once_per_key_until_it_expires(states):
    a, b = states
    assert a.first_seen("uuid-1", 0.3) is True
    assert b.first_seen("uuid-1", 0.3) is False  # the other replica sees it as known
    assert a.first_seen("uuid-1", 0.3) is False
    assert b.first_seen("uuid-2", 0.3) is True  # keys are independent
    time.sleep(0.4)
    assert a.first_seen("uuid-1", 0.3) is True


def test_first_seen_is_atomic_across_clients(states):
    results = concurrently([lambda s=states[i % 2]: s.first_seen("storm", 60)
                            for i in range(64)])
    assert results.count(True) == 1


def test_open_window_counts_occurrences_then_reopens_after_expiry(states):
    a, b = states
    assert [a.open_window("rule|shop|web", 0.3), b.open_window("rule|shop|web", 0.3),
            a.open_window("rule|shop|web", 0.3)] == [1, 2, 3]
    assert b.open_window("rule|shop|other", 0.3) == 1
    time.sleep(0.4)
    assert a.open_window("rule|shop|web", 0.3) == 1


def test_open_window_answers_1_to_the_event_that_opened_it(states):
    a, b = states
    assert a.open_window("rule|shop|web", 60, member="uuid-1") == 1
    assert b.open_window("rule|shop|web", 60, member="uuid-2") == 2
    assert b.open_window("rule|shop|web", 60, member="uuid-1") == 1  # its retry still acts
    assert a.open_window("rule|shop|web", 60, member="uuid-3") == 3


def test_open_window_is_atomic_across_clients(states):
    counts = concurrently([lambda s=states[i % 2]: s.open_window("w", 60) for i in range(64)])
    assert sorted(counts) == list(range(1, 65))  # exactly one opener, no count repeated


def test_take_token_allows_the_burst_then_refills_at_the_rate(states):
    a, b = states
    assert [a.take_token("kube", 10, 3), b.take_token("kube", 10, 3),
            a.take_token("kube", 10, 3)] == [0, 0, 0]
    wait = b.take_token("kube", 10, 3)
    assert 0.05 < wait <= 0.1  # one token comes back every 1/rate seconds
    time.sleep(wait + 0.02)
    assert a.take_token("kube", 10, 3) == 0
    assert b.take_token("other", 10, 3) == 0  # buckets are independent


def test_take_token_burst_is_shared_by_every_client(states):
    waits = concurrently([lambda s=states[i % 2]: s.take_token("kube", 0.01, 10)
                          for i in range(40)])
    assert waits.count(0) == 10
    assert all(w > 0 for w in waits if w != 0)


def test_allow_in_window_is_a_sliding_limit(states):
    a, b = states
    assert [allow_in_window(a, "deletions", 2, 0.4), allow_in_window(b, "deletions", 2, 0.4)] \
        == [True, True]
    assert allow_in_window(a, "deletions", 2, 0.4) is False  # refusals are not counted
    assert allow_in_window(b, "cordons", 2, 0.4) is True
    time.sleep(0.45)
    assert allow_in_window(b, "deletions", 2, 0.4) is True


def test_allow_in_window_counts_a_member_once_however_often_it_is_retried(states):
    a, b = states
    assert allow_in_window(a, "deletions", 2, 60, member="pod-uid-1")
    assert allow_in_window(b, "deletions", 2, 60, member="pod-uid-1")  # a retry, not a hit
    assert allow_in_window(a, "deletions", 2, 60, member="pod-uid-2")
    assert not allow_in_window(b, "deletions", 2, 60, member="pod-uid-3")
    assert allow_in_window(a, "deletions", 2, 60, member="pod-uid-1")


def test_allow_in_window_is_atomic_across_clients(states):
    allowed = concurrently([lambda s=states[i % 2]: allow_in_window(s, "d", 5, 60)
                            for i in range(64)])
    assert allowed.count(True) == 5


def test_prefix_keeps_deployments_apart(redis_url):
    one, two = RedisState(redis_url, prefix="one:"), RedisState(redis_url, prefix="two:")
    try:
        assert one.first_seen("k", 60) and two.first_seen("k", 60)
    finally:
        one.close()
        two.close()


# --- two replicas behind one Service --------------------------------------------------------
@pytest.fixture
def replicas(kube, make_table, make_app, redis_url):
    """Two apps, each with its own journal and API client, sharing one Redis."""
    kube.api.add_node("node-a")
    kube.api.add_node("node-b")

    def make(deletions_per_minute=10, **settings):
        table = make_table(delete_pod_table(deletions_per_minute))
        return [make_app(table, api_client=kube.api_client(), redis_url=redis_url,
                         namespace="falco-responder", **settings) for _ in range(2)]
    return make


def post_split(apps, events):
    """Each event to one replica in turn, as a Service spreads them; the intake statuses."""
    clients = [app.test_client() for app in apps]
    statuses = []
    for i, event in enumerate(events):
        reply = clients[i % len(clients)].post("/", data=json.dumps(event),
                                               content_type="application/json")
        assert reply.status_code == 202, reply.get_json()
        statuses.append(reply.get_json()["status"])
    return statuses


def run_workers(apps):
    """Both replicas' workers at the same time, until neither has anything left."""
    handled = concurrently([app.extensions["worker"].run_pending for app in apps])
    return sum(handled)


def decisions(apps, uuids):
    """The final outcome of every event, from whichever replica has it."""
    found = {}
    for app in apps:
        for uuid in uuids:
            status = app.test_client().get(f"/events/{uuid}")
            if status.status_code == 200 and "replica" not in status.get_json():
                assert uuid not in found, f"{uuid} is in both replicas' journals"
                found[uuid] = status.get_json()
    assert set(found) == set(uuids)
    return found


def test_two_replicas_receiving_the_same_storm_delete_the_pod_once(kube, replicas):
    apps = replicas()
    kube.api.add_pod("shop", "web", node="node-a", container_ids=(FULL_CID,))
    same = [netcat_event("same-uuid")] * 200
    different = [netcat_event(f"storm-{i}") for i in range(200)]

    # The same uuid through both replicas: recorded once, in one journal.
    assert Counter(post_split(apps, same)) == {"queued": 1, "duplicate": 199}
    assert Counter(post_split(apps, different)) == {"queued": 200}
    assert run_workers(apps) == 201
    assert sum(app.extensions["store"].pending() for app in apps) == 0

    found = decisions(apps, ["same-uuid", *(e["uuid"] for e in different)])
    assert {s["state"] for s in found.values()} == {"done"}
    outcomes = Counter(s["decisions"][0]["outcome"] for s in found.values())
    assert outcomes == {"done": 1, "coalesced": 200}
    deletes = [c for c in kube.api.calls if c.method == "DELETE"]
    assert [(c.path, c.status) for c in deletes] == [("/api/v1/namespaces/shop/pods/web", 200)]
    # Coalesced events cost no API request: the storm does not eat the shared rate limit.
    pod_calls = [c.method for c in kube.api.calls if c.path.endswith("/pods/web")]
    assert pod_calls == ["GET", "DELETE"]


def test_the_pod_deletion_limit_is_shared_by_the_replicas(kube, replicas):
    apps = replicas(deletions_per_minute=3)
    pods = [f"web-{i}" for i in range(8)]
    for pod in pods:
        kube.api.add_pod("shop", pod, node="node-a", container_ids=(FULL_CID,))
    events = [netcat_event(f"u-{pod}", pod=pod) for pod in pods]

    assert Counter(post_split(apps, events)) == {"queued": 8}
    assert run_workers(apps) == 8
    found = decisions(apps, [e["uuid"] for e in events])
    results = Counter((s["decisions"][0]["outcome"], s["decisions"][0].get("reason"))
                      for s in found.values())
    # Each replica alone would allow 3 per minute (6 in all); together they allow 3.
    assert results == {("done", None): 3,
                       ("skipped", "pod deletion limit reached (3 per minute)"): 5}
    assert len([c for c in kube.api.calls if c.method == "DELETE"]) == 3
    assert len(kube.api.pods) == 5
    for app in apps:
        text = app.test_client().get("/metrics").get_data(as_text=True)
        assert 'responder_guardrail_trips_total{limit="pod-deletions"}' in text


def test_replicas_share_the_kubernetes_rate_limit(kube, replicas, redis_url):
    apps = replicas(kube_qps=5, kube_burst=10)
    throttles = [app.extensions["responder"]._throttle for app in apps]
    started = time.monotonic()
    concurrently([throttles[i % 2] for i in range(14)])  # burst 10, then 5 per second
    # Separate buckets would serve all 14 from their bursts at once; one shared bucket
    # makes the last 4 wait for tokens at 5 per second.
    assert time.monotonic() - started >= 0.6


def test_an_event_dropped_by_a_full_replica_is_accepted_when_resent(kube, make_table,
                                                                     make_app, redis_url):
    table = make_table(delete_pod_table(10))
    full = make_app(table, api_client=kube.api_client(), redis_url=redis_url, max_pending=1)
    roomy = make_app(table, api_client=kube.api_client(), redis_url=redis_url)
    assert post_split([full], [netcat_event("first")]) == ["queued"]
    assert post_split([full], [netcat_event("resent")]) == ["dropped"]
    # Had the uuid stayed "seen" in Redis, every replica would now call it a duplicate.
    assert post_split([roomy], [netcat_event("resent")]) == ["queued"]
