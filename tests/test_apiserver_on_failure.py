"""`on_failure: stop` through the queue worker on a real kube-apiserver: a transient failure
of the stopping action holds the rule's later actions back and the event is tried again,
the failed action first; once it succeeds, the rest runs. Nothing is recorded in between."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from responder.actions import BUILTIN_ACTIONS, Action, Outcome, Registry, Result, Target
from responder.actions.pods import POD, READ_POD

from .netcat import FULL_CID, netcat_event

pytestmark = pytest.mark.slow

TABLE = """
defaults: {dry_run: false}
rules:
  - name: contain
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: flaky-capture
        on_failure: stop
      - action: label-pod
        params: {labels: {quarantine: "true"}}
"""


class FlakyCapture(Action):
    """A stand-in for a capture whose store answers 503 while `failing` is set."""

    name = "flaky-capture"
    needs = ("namespace", "pod")
    acts_on = POD
    rbac = (READ_POD,)
    failing = True
    calls = 0

    def run(self, target: Target, params: Mapping[str, Any]) -> Result:
        type(self).calls += 1
        if type(self).failing:
            raise ApiException(status=503, reason="Service Unavailable")
        return Result(Outcome.DONE, details={"digest": "sha256:" + "0" * 64})


@pytest.fixture
def registry():
    FlakyCapture.failing, FlakyCapture.calls = True, 0
    return Registry([*BUILTIN_ACTIONS, FlakyCapture])


def test_a_transient_failure_holds_containment_back_until_the_retry_succeeds(
        cluster, apiserver, make_app, make_table):
    node = cluster.add_node("node-a").metadata.name
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    app = make_app(make_table(TABLE), api_client=apiserver.api_client())
    client = app.test_client()
    reply = client.post("/", data=json.dumps(netcat_event(namespace=cluster.namespace)),
                        content_type="application/json")
    assert reply.status_code == 202
    worker = app.extensions["worker"]

    worker.run_pending()
    status = client.get("/events/u-1").get_json()
    assert (status["state"], status["decisions"]) == ("pending", [])
    assert "503" in status["error"]
    assert "quarantine" not in cluster.pod("web").metadata.labels
    tries = FlakyCapture.calls
    assert tries >= 1

    FlakyCapture.failing = False
    deadline = time.monotonic() + 10
    while client.get("/events/u-1").get_json()["state"] == "pending":
        assert time.monotonic() < deadline, "the event was never tried again"
        worker.run_pending()
        time.sleep(0.1)
    status = client.get("/events/u-1").get_json()
    assert [(d["action"], d["outcome"]) for d in status["decisions"]] == [
        ("flaky-capture", "done"), ("label-pod", "done")]
    assert FlakyCapture.calls == tries + 1
    assert cluster.pod("web").metadata.labels["quarantine"] == "true"


def test_a_final_failure_skips_the_rest_naming_the_failed_action(cluster, apiserver, make_app,
                                                                 make_table):
    node = cluster.add_node("node-a").metadata.name
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    app = make_app(make_table(TABLE), api_client=apiserver.api_client(), max_attempts=1)
    client = app.test_client()
    client.post("/", data=json.dumps(netcat_event(namespace=cluster.namespace)),
                content_type="application/json")
    app.extensions["worker"].run_pending()
    status = client.get("/events/u-1").get_json()
    assert status["state"] == "failed"
    assert [(d["action"], d["outcome"], d["reason"]) for d in status["decisions"]] == [
        ("flaky-capture", "failed", "HTTP 503: Service Unavailable"),
        ("label-pod", "skipped", "flaky-capture failed earlier in table rule contain "
         "(on_failure: stop)")]
    assert "quarantine" not in cluster.pod("web").metadata.labels
