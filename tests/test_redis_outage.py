"""With the shared Redis down (the shipped deployment's, restarted or rescheduled), no event is
lost: the intake still accepts it, the actions wait as transient failures, and they run
once Redis is back."""

from __future__ import annotations

import json
import time

import pytest

from .netcat import FULL_CID, delete_pod_table, netcat_event
from .redisserver import RedisServer

pytestmark = pytest.mark.slow


def test_actions_wait_for_redis_and_run_once_it_is_back(kube, make_app, make_table):
    kube.api.add_node("node-a")
    kube.api.add_node("node-b")
    kube.api.add_pod("shop", "web", node="node-a", container_ids=(FULL_CID,))
    first = RedisServer()
    with first:
        app = make_app(make_table(delete_pod_table()), api_client=kube.api_client(),
                       redis_url=first.url, namespace="falco-responder")
    # Redis is gone from here on.
    reply = app.test_client().post("/", data=json.dumps(netcat_event("u-1", pod="web")),
                                   content_type="application/json")
    assert reply.status_code == 202 and reply.get_json()["status"] == "queued"
    worker, store = app.extensions["worker"], app.extensions["store"]
    worker.run_pending()
    status = store.status("u-1")
    assert status["state"] == "pending" and status["error"], status
    assert not [c for c in kube.api.calls if c.method == "DELETE"]

    again = RedisServer()
    again.port, again.url = first.port, first.url  # back at the same address
    with again:
        deadline = time.monotonic() + 10
        while store.status("u-1")["state"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.2)  # the retry's delay
            worker.run_pending()
        assert store.status("u-1")["state"] == "done"
    assert [c.path for c in kube.api.calls if c.method == "DELETE"] == [
        "/api/v1/namespaces/shop/pods/web"]
