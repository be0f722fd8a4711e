"""An undo holds a request thread while it calls the API (seconds, minutes when the API is
slow), and the serving process has RESPONDER_THREADS of them for everything, Falcosidekick's
events included: undos may take all but one. Past that, another undo (over HTTP or a Slack
click) is refused at once with 429, instead of leaving events no thread (Falcosidekick drops
what it cannot deliver). The API here is the fault-injecting stand-in, made slow."""

from __future__ import annotations

import json
import threading
import time

import pytest

from .netcat import FULL_CID, netcat_event

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer undo-threads"}
TABLE = """
defaults: {dry_run: false, coalesce_seconds: 0}
rules:
  - name: mark
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {suspect: "true"}}
"""


def test_undos_leave_a_request_thread_for_events(kube, make_app, make_table):
    for pod in ("web", "api"):
        kube.api.add_pod("shop", pod, container_ids=(FULL_CID,))
    api = kube.api_client()
    app = make_app(make_table(TABLE), api_client=api, auth_token="undo-threads", threads=2)
    client = app.test_client()
    for uuid, pod in (("u-1", "web"), ("u-2", "api")):
        event = netcat_event(uuid, pod=pod, namespace="shop")
        assert client.post("/", data=json.dumps(event), headers=AUTH).status_code == 202
    app.extensions["worker"].run_pending()

    kube.api.delay = 2.0  # a slow API server: the first undo takes seconds
    first: dict = {}
    running = threading.Thread(target=lambda: first.update(
        reply=app.test_client().post("/events/u-1/undo", headers=AUTH)))
    running.start()
    time.sleep(0.3)
    started = time.monotonic()
    second = client.post("/events/u-2/undo", headers=AUTH)
    assert time.monotonic() - started < 1.0  # refused at once, not 1.7 s or more later
    assert second.status_code == 429
    assert "another undo is running" in second.get_json()["error"]
    running.join(30)
    assert first["reply"].status_code == 200
    kube.api.delay = 0.0
    assert client.post("/events/u-2/undo", headers=AUTH).get_json()["outcome"] == "undone"
    assert kube.api.pods[("shop", "api")]["metadata"]["labels"].get("suspect") is None
    api.close()
