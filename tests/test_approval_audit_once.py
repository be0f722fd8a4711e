"""Each action of an event that waited for approval has one audit Event: those of the rules
without approval are recorded when they run (before the verdict), not again once it comes."""

from __future__ import annotations

import json

import pytest

from .netcat import FULL_CID, netcat_event

pytestmark = pytest.mark.slow
AUTH = "approval-audit-bearer"
TABLE = """
defaults: {dry_run: false}
rules:
  - name: label-first
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {suspect: "true"}}
  - name: label-on-approval
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    approval: {timeout: 15m, on_timeout: skip}
    actions:
      - action: label-pod
        params: {labels: {approved: "true"}}
"""


@pytest.fixture
def app(cluster, apiserver, make_app, make_table, tmp_path):
    node = cluster.add_node("node-a").metadata.name
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    return make_app(make_table(TABLE), api_client=apiserver.api_client(),
                    state_dir=str(tmp_path / "state"), auth_token=AUTH)


def work(app):
    """Run the worker, then wait until the audit Events it queued are written."""
    app.extensions["worker"].run_pending()
    assert app.extensions["responder"].audit.wait(10)


def audit_events(cluster):
    """(table rule named in the message, action) of each FalcoResponse Event, oldest first."""
    return [(e.message.split("table rule '")[1].split("'")[0], e.action)
            for e in cluster.events() if e.reason == "FalcoResponse"]


def decide(app, verdict):
    reply = app.test_client().post(f"/events/u-1/{verdict}", json={"by": "carol"},
                                   headers={"Authorization": f"Bearer {AUTH}"})
    assert reply.status_code == 200, reply.get_json()


@pytest.mark.parametrize("verdict, after", [
    ("approve", [("label-first", "label-pod"), ("label-on-approval", "label-pod")]),
    ("reject", [("label-first", "label-pod")]),
])
def test_an_action_run_before_the_verdict_is_recorded_once(cluster, app, verdict, after):
    reply = app.test_client().post("/", data=json.dumps(netcat_event(
        "u-1", namespace=cluster.namespace)), headers={"Authorization": f"Bearer {AUTH}"})
    assert reply.status_code == 202
    work(app)
    assert audit_events(cluster) == [("label-first", "label-pod")]
    assert cluster.pod("web").metadata.labels.get("suspect") == "true"

    decide(app, verdict)
    work(app)
    assert sorted(audit_events(cluster)) == after
    approved = [e.message for e in cluster.events() if "label-on-approval" in e.message]
    assert all("approved by carol" in m for m in approved)
