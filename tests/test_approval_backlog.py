"""Events awaiting approval leave the queue's count (nothing to do until someone decides), but
not its bound: at most RESPONDER_MAX_PENDING wait at once. Past it, a new event's actions are
skipped with the reason instead of waiting, so a flood of alerts (or forged events) for
distinct pods cannot grow the journal past the cap, nor bury real requests in Slack."""

from __future__ import annotations

import json

import pytest

from .netcat import netcat_event
from .test_approvals import AUTH, outcomes, status

pytestmark = pytest.mark.slow
TABLE = """
defaults: {dry_run: false}
rules:
  - name: contain
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    approval: {required: true, timeout: 15m}
    actions:
      - action: label-pod
        params: {labels: {suspect: "true"}}
"""


def test_no_more_than_max_pending_events_await_approval(cluster, apiserver, make_app,
                                                        make_table):
    app = make_app(make_table(TABLE), api_client=apiserver.api_client(), auth_token=AUTH,
                   max_pending=2)
    for number in range(3):  # one pod each: no coalescing into an awaited approval
        event = netcat_event(f"ev-{number}", pod=f"pod-{number}", namespace=cluster.namespace)
        reply = app.test_client().post("/", data=json.dumps(event),
                                       headers={"Authorization": f"Bearer {AUTH}"})
        assert reply.status_code == 202, reply.get_json()
        app.extensions["worker"].run_pending()
    states = [status(app, f"ev-{number}")["state"] for number in range(3)]
    assert states == ["awaiting-approval", "awaiting-approval", "done"]
    ((action, outcome, reason),) = outcomes(status(app, "ev-2"))
    assert (action, outcome) == ("label-pod", "skipped")
    assert "2 events already await approval" in reason and "RESPONDER_MAX_PENDING" in reason
