"""Undo across replicas: an undo (HTTP, Slack's button, the console) reaching the replica
without the event is queued in Redis to the replica holding it, which undoes it on the real
kube-apiserver and answers; a Slack click is answered within Slack's 3 seconds either way."""

from __future__ import annotations

import time

import pytest

from responder import relay

from . import test_approvals as approvals
from .slackserver import EPHEMERAL_PATH
from .test_approval_undo import AUTOMATIC, policies
from .test_approvals import AUTH, click, post_event, status

slack, web, responder_app = approvals.slack, approvals.web, approvals.responder_app

pytestmark = pytest.mark.slow


@pytest.fixture
def replicas(responder_app, redis_server):
    """Two replicas sharing the real Redis; the first holds the event, acted on at once."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()  # one server per module; every test's event is "ev-1"
    return (responder_app(AUTOMATIC, state="replica-a", redis_url=redis_server.url),
            responder_app(AUTOMATIC, state="replica-b", redis_url=redis_server.url))


def serve_undos(app):
    """Start the holder's undo server (started with its worker in a deployment)."""
    app.extensions["worker"].undo_server.start()


def http_undo(app, by="dave", uuid="ev-1"):
    return app.test_client().post(f"/events/{uuid}/undo", json={"by": by},
                                  headers={"Authorization": f"Bearer {AUTH}"})


def told(slack_server, user, timeout=15.0):
    """The ephemeral messages `user` was told, once there is one past 'started'."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        texts = [m["text"] for m in slack_server.state.answered(EPHEMERAL_PATH)
                 if m["user"] == user]
        if texts:
            return texts
        time.sleep(0.05)
    return []


def test_an_undo_on_the_other_replica_puts_the_cluster_back(cluster, web, replicas):
    holder, other = replicas
    post_event(holder, cluster.namespace)
    assert status(holder)["state"] == "done" and policies(cluster)
    serve_undos(holder)
    reply = http_undo(other)
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["outcome"] == "undone"
    assert policies(cluster) == []
    (undo,) = status(holder)["undos"]  # recorded in the holder's journal
    assert undo["by"] == "dave"
    assert http_undo(other).get_json()["outcome"] == "already-undone"


def test_an_undo_the_holder_does_not_answer_in_time_is_504_saying_how_to_check(
        cluster, web, replicas, monkeypatch):
    holder, other = replicas
    post_event(holder, cluster.namespace)
    monkeypatch.setattr(relay, "UNDO_WAIT_SECONDS", 1.0)
    reply = http_undo(other)  # the holder's undo server is not running
    assert reply.status_code == 504
    error = reply.get_json()["error"]
    assert "may still happen" in error and "GET /events/<uuid>" in error
    assert policies(cluster)  # nothing undone yet
    serve_undos(holder)  # the request is still queued: served once the holder is back
    deadline = time.monotonic() + 10
    while policies(cluster) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert policies(cluster) == []


def test_an_unknown_event_is_still_404(replicas):
    _, other = replicas
    reply = http_undo(other, uuid="never-seen")
    assert reply.status_code == 404 and "no event never-seen" in reply.get_json()["error"]


def test_with_redis_down_an_undo_is_503_on_either_replica(
        cluster, web, responder_app):
    from .redisserver import RedisServer

    with RedisServer() as redis:
        holder = responder_app(AUTOMATIC, state="replica-a", redis_url=redis.url)
        other = responder_app(AUTOMATIC, state="replica-b", redis_url=redis.url)
        post_event(holder, cluster.namespace)
    down = http_undo(other)
    assert down.status_code == 503
    error = down.get_json()["error"]
    assert "not on this replica" in error and "cannot be reached" in error
    # On the holder, as before: the undo's own lock is in Redis, so it is refused 503
    # (never done twice at once by two replicas), and nothing is half undone.
    here = http_undo(holder)
    assert here.status_code == 503 and "undo lock" in here.get_json()["error"]
    assert policies(cluster)


def test_a_slack_undo_on_the_other_replica_is_answered_at_once_and_told_when_done(
        cluster, web, slack, replicas):
    holder, other = replicas
    post_event(holder, cluster.namespace)
    started = time.monotonic()
    # The holder is not serving yet: the undo cannot finish within Slack's 3 seconds.
    reply = click(other, "undo", user_id="U0CAROL", user_name="carol")
    assert time.monotonic() - started < 3.0
    body = reply.get_json()
    assert reply.status_code == 200 and body["ok"] is True and body["started"] is True
    assert policies(cluster)
    serve_undos(holder)
    texts = told(slack, "U0CAROL")
    assert texts and "Undo of event ev-1: undone." in texts[-1], texts
    assert policies(cluster) == []
    assert status(holder)["undos"][0]["by"] == "carol (Slack U0CAROL)"


def test_slack_undos_at_once_are_bounded_by_the_undo_limit(cluster, web, slack, replicas):
    holder, other = replicas
    post_event(holder, cluster.namespace)
    interactions = other.extensions["interactions"]
    assert interactions.undo_limit == 1  # RESPONDER_THREADS 2: one request thread left
    first = click(other, "undo", user_id="U0CAROL", user_name="carol").get_json()
    assert first["started"] is True  # still waiting for the holder, holding the one place
    second = click(other, "undo", user_id="U0DAVE", user_name="dave").get_json()
    assert second["ok"] is False and second["status"] == 429
    assert "Not undone" in told(slack, "U0DAVE")[-1]
    serve_undos(holder)
    assert "undone" in told(slack, "U0CAROL")[-1]
