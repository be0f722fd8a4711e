"""Reads across replicas: `GET /events/<uuid>` and its `/evidence` reaching the replica
without the event (behind the Service, a coin toss with two) are answered by the replica
holding it, through the shared Redis, on the real kube-apiserver's events."""

from __future__ import annotations

import threading
import time

import pytest

from responder import eventread

from . import test_approvals as approvals
from .test_approvals import AUTH, post_event, status, table

slack, web, responder_app = approvals.slack, approvals.web, approvals.responder_app

pytestmark = pytest.mark.slow
BEARER = {"Authorization": f"Bearer {AUTH}"}
CAPTURE_AND_LABEL = """
defaults: {dry_run: false}
rules:
  - name: capture-then-label
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: capture-evidence
      - action: label-pod
        params: {labels: {quarantine: "true"}}
"""


@pytest.fixture
def replicas(responder_app, redis_server):
    """Two replicas sharing the real Redis; the first holds the events."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    def make(text: str) -> tuple:
        return (responder_app(text, state="replica-a", redis_url=redis_server.url),
                responder_app(text, state="replica-b", redis_url=redis_server.url))
    return make


def get(app, path: str):
    return app.test_client().get(path, headers=BEARER)


def owner(app) -> str:
    return app.extensions["components"].relay.owner


def test_a_status_read_on_the_other_replica_is_the_holders_answer(cluster, web, replicas):
    holder, other = replicas(CAPTURE_AND_LABEL)
    post_event(holder, cluster.namespace)
    here = status(holder)
    reply = get(other, "/events/ev-1")
    assert reply.status_code == 200, reply.get_json()
    there = reply.get_json()
    assert there.pop("replica") == owner(holder)
    assert there == here and here["state"] == "done"
    assert [d["outcome"] for d in there["decisions"]] == ["done", "done"]


def test_an_evidence_read_on_the_other_replica_lists_the_holders_bundle(cluster, web,
                                                                        replicas):
    holder, other = replicas(CAPTURE_AND_LABEL)
    post_event(holder, cluster.namespace)
    reply = get(other, "/events/ev-1/evidence")
    assert reply.status_code == 200, reply.get_json()
    body = reply.get_json()
    assert body["replica"] == owner(holder)
    [bundle] = body["bundles"]
    assert bundle["verified"] is True  # read from the holder's store, where it was written
    assert body["bundles"] == get(holder, "/events/ev-1/evidence").get_json()["bundles"]


def test_a_waiting_event_reads_the_same_on_both_replicas(cluster, web, replicas):
    holder, other = replicas(table())
    post_event(holder, cluster.namespace)
    there = get(other, "/events/ev-1").get_json()
    assert there["state"] == "awaiting-approval" and there.pop("replica") == owner(holder)
    assert there == status(holder)


def test_a_holder_that_does_not_answer_is_504_and_an_unknown_event_404_everywhere(
        cluster, web, replicas, monkeypatch):
    holder, other = replicas(CAPTURE_AND_LABEL)
    post_event(holder, cluster.namespace)
    monkeypatch.setattr(eventread, "READ_WAIT_SECONDS", 1.0)
    started = time.monotonic()
    holder.extensions["read_server"].stop()  # a holder that does not answer
    reply = get(other, "/events/ev-1")
    assert reply.status_code == 504 and owner(holder) in reply.get_json()["error"]
    assert time.monotonic() - started < 5
    for app in (holder, other):
        assert get(app, "/events/nope").status_code == 404
        assert get(app, "/events/nope/evidence").status_code == 404


def test_reads_waiting_on_another_replica_leave_a_request_thread_for_events(
        cluster, web, replicas, monkeypatch):
    """With RESPONDER_THREADS 2, one read may wait on the holder; a second at the same time
    is 429 at once, and an event is still taken in meanwhile."""
    holder, other = replicas(CAPTURE_AND_LABEL)
    post_event(holder, cluster.namespace)
    holder.extensions["read_server"].stop()
    monkeypatch.setattr(eventread, "READ_WAIT_SECONDS", 3.0)
    waiting = threading.Thread(target=get, args=(other, "/events/ev-1"))
    waiting.start()
    time.sleep(0.5)
    try:
        second = get(other, "/events/ev-1/evidence")
        assert second.status_code == 429 and "try again" in second.get_json()["error"]
        # An undo passed on to the holder would wait as long: it shares the bound.
        undo = other.test_client().post("/events/ev-1/undo", json={"by": "dave"},
                                        headers=BEARER)
        assert undo.status_code == 429, undo.get_json()
        post_event(other, cluster.namespace, uuid="ev-2")
    finally:
        waiting.join(10)
    exposition = other.test_client().get("/metrics").get_data(as_text=True)
    assert 'responder_requests_rejected_total{status="429"} 2.0' in exposition


def test_a_holder_that_is_gone_is_404_at_once_not_a_wait(cluster, web, replicas,
                                                         redis_server):
    """A new pod is a new replica: the old one's events are gone with its journal. Its
    `where:` keys outlive it, its `alive:` key does not (5 s)."""
    import redis

    holder, other = replicas(CAPTURE_AND_LABEL)
    post_event(holder, cluster.namespace)
    holder.extensions["read_server"].stop()
    with redis.Redis.from_url(redis_server.url) as client:
        client.delete(f"falco-responder:alive:{owner(holder)}")  # as 5 s after it stopped
    started = time.monotonic()
    assert get(other, "/events/ev-1").status_code == 404
    assert time.monotonic() - started < eventread.READ_WAIT_SECONDS
