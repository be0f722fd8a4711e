"""The pod deletion limit counts what happened: a DELETE answered 404 (or refused) gives its
place back, and concurrent deletes, one replica or several through Redis, never exceed it."""

import json
import threading
from collections import Counter

import pytest

from responder.journal import EventStore
from responder.localstate import LocalState
from responder.shared import RedisState

from .netcat import FULL_CID, delete_pod_table, netcat_event

LIMIT = "pod deletion limit reached (2 per minute)"


def post(app, event):
    reply = app.test_client().post("/", data=json.dumps(event))
    assert reply.status_code == 200, reply.get_json()
    (decision,) = reply.get_json()["decisions"]
    return decision["outcome"], decision.get("reason")


def deletes(kube):
    return Counter(c.status for c in kube.api.calls if c.method == "DELETE")


@pytest.fixture
def inline(kube, make_app, make_table):
    def make(limit=2, **settings):
        # The Kubernetes request throttle off: it is not what these tests are about.
        return make_app(make_table(delete_pod_table(limit)), api_client=kube.api_client(),
                        intake="inline", kube_qps=10_000.0, kube_burst=10_000, **settings)
    return make


def test_alerts_about_pods_already_gone_leave_the_budget_to_a_genuine_one(kube, inline):
    app = inline()
    for i in range(10):
        assert post(app, netcat_event(f"gone-{i}", pod=f"gone-{i}")) == (
            "already-done", "already gone")
    kube.api.add_pod("shop", "web", container_ids=(FULL_CID,))
    assert post(app, netcat_event("genuine")) == ("done", None)
    assert deletes(kube) == {404: 10, 200: 1}


def test_a_pod_deleted_between_the_read_and_the_delete_gives_its_place_back(kube, inline):
    app = inline()
    for i in range(5):
        kube.api.add_pod("shop", f"racy-{i}", container_ids=(FULL_CID,))
        kube.api.fail("DELETE", f"/api/v1/namespaces/shop/pods/racy-{i}", 404)
        assert post(app, netcat_event(f"racy-{i}", pod=f"racy-{i}"))[0] == "already-done"
    for i in range(3):
        kube.api.add_pod("shop", f"web-{i}", container_ids=(FULL_CID,))
    outcomes = [post(app, netcat_event(f"w-{i}", pod=f"web-{i}")) for i in range(3)]
    assert outcomes == [("done", None), ("done", None), ("skipped", LIMIT)]


def test_a_replaced_pod_gives_its_place_back(kube, inline):
    app = inline()
    for i in range(3):
        kube.api.add_pod("shop", f"old-{i}", container_ids=(FULL_CID,))
        path = f"/api/v1/namespaces/shop/pods/old-{i}"
        kube.api.fail("DELETE", path, 409, "Precondition failed: UID in precondition")
        assert post(app, netcat_event(f"old-{i}", pod=f"old-{i}"))[0] == "skipped"
    kube.api.add_pod("shop", "web", container_ids=(FULL_CID,))
    assert post(app, netcat_event("genuine")) == ("done", None)


def test_concurrent_deletes_never_exceed_the_limit_while_404s_run_beside_them(kube, inline):
    app = inline(limit=3)
    events = []
    for i in range(12):
        kube.api.add_pod("shop", f"web-{i}", container_ids=(FULL_CID,))
        events.append(netcat_event(f"w-{i}", pod=f"web-{i}"))
        events.append(netcat_event(f"g-{i}", pod=f"gone-{i}"))
    kube.api.delay = 0.01  # deletes overlap
    start = threading.Barrier(len(events))
    results = []

    def run(event):
        start.wait(10)
        results.append(post(app, event))

    threads = [threading.Thread(target=run, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Places held by deletes still in flight count, so some genuine ones may be skipped
    # meanwhile (on a loaded machine, all of them: the 404s may hold every place at once);
    # never more than the limit are deleted.
    deleted = deletes(kube)[200]
    assert deleted <= 3 and Counter(o for o, _ in results)["done"] == deleted
    assert len(kube.api.pods) == 12 - deleted
    # Once they are settled, only the deletions that happened count.
    kube.api.delay = 0
    later = [post(app, netcat_event(f"later-{i}", pod=f"web-{i}")) for i in range(12)
             if ("shop", f"web-{i}") in kube.api.pods]
    counted = Counter(o for o, _ in later)
    assert (counted["done"], counted["skipped"], len(later)) == (3 - deleted, 9, 12 - deleted)


# --- the shared state itself: SQLite (one replica) and Redis (every replica) ------------

@pytest.fixture(params=["local", "redis"])
def state(request, tmp_path):
    if request.param == "local":
        store = EventStore(tmp_path / "state")
        yield LocalState(store)
        store.close()
        return
    server = request.getfixturevalue("redis_server")
    made = RedisState(server.url, prefix=f"budget-{tmp_path.name}:")
    yield made
    made.close()


def test_a_released_place_is_free_again_and_a_settled_one_counts(state):
    first = state.reserve_in_window("d", 2, 60, "pod-1")
    second = state.reserve_in_window("d", 2, 60, "pod-2")
    assert first and second
    assert state.reserve_in_window("d", 2, 60, "pod-3") is None  # held places count
    state.settle_in_window("d", first, "pod-1", happened=False)  # a 404
    third = state.reserve_in_window("d", 2, 60, "pod-3")
    assert third
    state.settle_in_window("d", second, "pod-2", happened=True)
    state.settle_in_window("d", third, "pod-3", happened=True)
    assert state.reserve_in_window("d", 2, 60, "pod-4") is None
    # A retry of a counted deletion is let through without counting again.
    assert state.reserve_in_window("d", 2, 60, "pod-2") == ""


def test_two_tries_of_one_pod_count_once_whichever_settles_first(state):
    a = state.reserve_in_window("d", 3, 60, "pod-1")
    b = state.reserve_in_window("d", 3, 60, "pod-1")  # both before either deleted
    state.settle_in_window("d", a, "pod-1", happened=True)
    state.settle_in_window("d", b, "pod-1", happened=False)  # the other found it gone
    assert state.reserve_in_window("d", 3, 60, "pod-1") == ""
    assert state.reserve_in_window("d", 3, 60, "pod-2")
    assert state.reserve_in_window("d", 3, 60, "pod-3")
    assert state.reserve_in_window("d", 3, 60, "pod-4") is None


def test_concurrent_reservations_never_exceed_the_limit(state, tmp_path):
    start = threading.Barrier(20)
    tokens = []

    def reserve(i):
        start.wait(10)
        tokens.append(state.reserve_in_window("d", 5, 60, f"pod-{i}"))

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(t is not None for t in tokens) == 5


def test_replicas_sharing_redis_give_back_the_places_of_404s(kube, make_app, make_table,
                                                            redis_server, tmp_path):
    url = redis_server.url.rsplit("/", 1)[0] + "/1"
    RedisState(url).redis.flushdb()
    apps = [make_app(make_table(delete_pod_table(2)), api_client=kube.api_client(),
                     intake="inline", redis_url=url, kube_qps=10_000.0, kube_burst=10_000)
            for _ in range(2)]
    for i in range(6):
        assert post(apps[i % 2], netcat_event(f"gone-{i}", pod=f"gone-{i}"))[0] == "already-done"
    for i in range(3):
        kube.api.add_pod("shop", f"web-{i}", container_ids=(FULL_CID,))
    outcomes = [post(apps[i % 2], netcat_event(f"w-{i}", pod=f"web-{i}")) for i in range(3)]
    assert outcomes == [("done", None), ("done", None), ("skipped", LIMIT)]
