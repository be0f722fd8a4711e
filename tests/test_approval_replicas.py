"""Approvals across replicas: the shipped Deployment runs two, each with its own journal,
and Slack's clicks (through the Ingress) and `responder approve` (through the Service) reach
either. A verdict given to the replica without the event is recorded in the shared Redis
(first verdict wins) and the holder's worker acts on it, as on its own."""

from __future__ import annotations

import time

import pytest

from . import test_approvals as approvals
from .slackserver import UPDATE_PATH
from .test_approvals import AUTH, attachment_text, click, outcomes, post_event, status, table, work

slack, web, responder_app = approvals.slack, approvals.web, approvals.responder_app

pytestmark = pytest.mark.slow


@pytest.fixture
def replicas(responder_app, redis_server):
    """Two replicas (two state dirs) sharing the real Redis; the first holds the event."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()  # one server per module; every test's event is "ev-1"

    def make(text=None, redis_url=None):
        url = redis_url or redis_server.url
        return (responder_app(text, state="replica-a", redis_url=url),
                responder_app(text, state="replica-b", redis_url=url))
    return make


def http_verdict(app, verb, by="bob", uuid="ev-1"):
    return app.test_client().post(f"/events/{uuid}/{verb}", json={"by": by},
                                  headers={"Authorization": f"Bearer {AUTH}"})


def test_a_click_on_the_other_replica_approves(cluster, web, slack, replicas):
    holder, other = replicas()
    post_event(holder, cluster.namespace)
    assert status(holder)["state"] == "awaiting-approval"
    reply = click(other, "approve").get_json()
    assert reply["ok"] is True and reply["relayed"] is True, reply
    assert "the replica holding the event acts on it" in reply["note"]
    assert reply["approval"]["decision"] == "approved"
    work(holder)
    done = status(holder)
    assert done["state"] == "done"
    assert outcomes(done)[1] == ("delete-pod", "done", None)
    assert cluster.pod("web") is None  # deleted on the real API server by the holder
    assert (done["approval"]["by"], done["approval"]["via"],
            done["approval"]["user_id"]) == ("alice", "slack", "U0ALICE")
    assert "*Approved* by <@U0ALICE> (alice)" in attachment_text(
        slack.state.answered(UPDATE_PATH)[-1])
    assert 'responder_approvals_total{decision="approved",via="slack"} 1.0' in \
        holder.test_client().get("/metrics").get_data(as_text=True)


def test_a_rejection_over_http_on_the_other_replica_skips_the_action(cluster, web, replicas):
    holder, other = replicas()
    post_event(holder, cluster.namespace)
    reply = http_verdict(other, "reject")
    assert reply.status_code == 200, reply.get_json()
    work(holder)
    assert outcomes(status(holder))[1] == ("delete-pod", "skipped", "rejected by bob (HTTP)")
    assert cluster.pod("web") is not None


def test_a_second_verdict_on_either_replica_is_refused_with_the_first(cluster, web, replicas):
    holder, other = replicas()
    post_event(holder, cluster.namespace)
    assert http_verdict(other, "approve", by="alice").status_code == 200
    again = http_verdict(other, "reject", by="mallory")
    assert again.status_code == 409
    assert "already approved by alice (HTTP)" in again.get_json()["error"]
    # On the holder too, before its worker has applied the first: the key is one.
    here = http_verdict(holder, "reject", by="mallory")
    assert here.status_code == 409 and "already approved by alice" in here.get_json()["error"]
    work(holder)
    assert status(holder)["approval"]["by"] == "alice"
    assert cluster.pod("web") is None


def test_the_holders_timeout_wins_over_a_later_click_elsewhere(cluster, web, replicas):
    holder, other = replicas(table("30s", "skip"))
    post_event(holder, cluster.namespace)
    holder.extensions["store"].clock = lambda: time.time() + 31
    work(holder)
    assert outcomes(status(holder))[1] == ("delete-pod", "skipped", "approval timed out")
    late = click(other, "approve").get_json()
    assert late["ok"] is False and "approval timed out" in late["error"]
    assert cluster.pod("web") is not None


def test_a_click_elsewhere_before_the_holder_looks_wins_over_its_timeout(cluster, web,
                                                                       replicas):
    holder, other = replicas(table("30s", "skip"))
    post_event(holder, cluster.namespace)
    assert click(other, "approve").get_json()["ok"] is True
    # The deadline passes before the holder's worker runs: one verdict only, the click's.
    holder.extensions["store"].clock = lambda: time.time() + 31
    assert holder.extensions["worker"].expire_approvals() == ["ev-1"]
    work(holder)
    done = status(holder)
    assert done["approval"]["decision"] == "approved" and done["approval"]["by"] == "alice"
    assert cluster.pod("web") is None


def test_an_unknown_event_is_still_404_on_every_replica(replicas):
    _, other = replicas()
    reply = http_verdict(other, "approve", uuid="never-seen")
    assert reply.status_code == 404 and "no event never-seen" in reply.get_json()["error"]


def test_with_redis_down_a_remote_verdict_is_503_and_a_local_one_still_works(
        cluster, web, replicas):
    from .redisserver import RedisServer

    with RedisServer() as redis:
        holder, other = replicas(redis_url=redis.url)
        post_event(holder, cluster.namespace)
    # Redis is gone now.
    remote = http_verdict(other, "approve")
    assert remote.status_code == 503
    body = remote.get_json()
    assert "not on this replica" in body["error"] and "ConnectionError" in body["error"]
    slack_click = click(other, "approve").get_json()
    assert slack_click["ok"] is False and "cannot be reached" in slack_click["error"]
    local = http_verdict(holder, "approve", by="carol")
    assert local.status_code == 200, local.get_json()
    work(holder)
    after = status(holder)
    assert (after["approval"]["decision"], after["approval"]["by"]) == ("approved", "carol")
    # The delete itself needs Redis (its limits, the API budget): retried until it is back,
    # as every action is with Redis down (test_redis_outage.py).
    assert after["state"] == "pending" and cluster.pod("web") is not None


def test_a_malformed_verdict_in_redis_is_ignored_and_the_event_keeps_waiting(
        cluster, web, replicas, redis_server):
    import redis

    holder, _ = replicas()
    post_event(holder, cluster.namespace)
    with redis.Redis.from_url(redis_server.url) as client:
        client.set("falco-responder:verdict:ev-1", '{"decision": "maybe", "by": 1}')
    work(holder)
    assert status(holder)["state"] == "awaiting-approval"
    assert cluster.pod("web") is not None


def test_a_restarted_holder_publishes_its_waiting_events_again(cluster, web, replicas,
                                                              redis_server):
    import redis

    holder, other = replicas()
    post_event(holder, cluster.namespace)
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()  # Redis restarted empty (the shipped one keeps nothing on disk)
    assert http_verdict(other, "approve").status_code == 404
    holder.extensions["worker"].take_over()  # what a restart of the holder runs
    assert http_verdict(other, "approve").status_code == 200
    work(holder)
    assert cluster.pod("web") is None


def test_the_console_on_the_other_replica_approves_and_undoes(cluster, web, replicas):
    from .test_approval_undo import TABLE as UNDOABLE
    from .test_approval_undo import policies
    from .test_console_controls import control, csrf_of, log_in

    holder, other = replicas(UNDOABLE)
    holder.extensions["worker"].undo_server.start()
    post_event(holder, cluster.namespace)
    client = other.test_client()
    log_in(client, "erin", token=AUTH)
    control(client, "ev-1", "approve", csrf_of(client))
    work(holder)
    done = status(holder)
    assert (done["approval"]["by"], done["approval"]["via"]) == ("erin", "console")
    assert policies(cluster)
    control(client, "ev-1", "undo", csrf_of(client))
    assert policies(cluster) == []
    assert status(holder)["undos"][0]["by"] == "erin (console)"
