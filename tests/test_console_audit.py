"""The alert page's audit Events, read back from a real kube-apiserver: the Events the
responder recorded for that alert, and a clear message when the API refuses."""

from __future__ import annotations

import json
import time

import pytest

from .netcat import FULL_CID, netcat_event

pytestmark = pytest.mark.slow

ARMED = """
defaults: {dry_run: false, protected_namespaces: [kube-system]}
rules:
  - name: label-reverse-shells
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true"}}
"""


@pytest.fixture
def shop(cluster):
    node = cluster.add_node("node-a").metadata.name
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    return cluster


def respond(make_app, make_table, api_client, namespace, *uuids):
    app = make_app(make_table(ARMED), api_client=api_client)
    client = app.test_client()
    for uuid in uuids:
        event = netcat_event(uuid=uuid, namespace=namespace, hostname="node-a")
        reply = client.post("/", data=json.dumps(event), content_type="application/json")
        assert reply.status_code == 202, reply.get_json()
        app.extensions["worker"].run_pending()
    return client


def audit_page(client, uuid, wanted, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        html = client.get(f"/ui/alerts/{uuid}/audit").get_data(as_text=True)
        if wanted in html or time.monotonic() > deadline:
            return html
        time.sleep(0.2)


def test_alert_page_lists_the_audit_events_recorded_for_that_alert(shop, apiserver, make_app,
                                                                   make_table):
    client = respond(make_app, make_table, apiserver.api_client(), shop.namespace, "u-first",
                     "u-second")
    html = audit_page(client, "u-first", "label-pod")
    assert "Pod " + shop.namespace + "/web" in html
    assert "label-pod" in html and "table rule &#39;label-reverse-shells&#39;" in html
    assert "Falco event u-first" in html and html.count("<tr>") == 2  # header, one Event
    # The second alert on the same pod changed nothing (coalesced with the first): the
    # first alert's Event, on the same pod, is not listed as its.
    [decision] = client.get("/events/u-second").get_json()["decisions"]
    assert decision["outcome"] == "coalesced"
    second = client.get("/ui/alerts/u-second/audit").get_data(as_text=True)
    assert 'id="audit-none"' in second and "u-first" not in second


def test_audit_events_the_api_refuses_are_a_clear_message(shop, apiserver, make_app,
                                                          make_table):
    client = respond(make_app, make_table, apiserver.api_client(), shop.namespace, "u-seen")
    # The same journal seen by a process whose credentials the API does not accept.
    app = client.application
    app.extensions["responder"].api_client = apiserver.api_client(token="not-a-known-token")
    html = client.get("/ui/alerts/u-seen/audit").get_data(as_text=True)
    assert f"cannot list audit Events in {shop.namespace}: HTTP 401" in html
