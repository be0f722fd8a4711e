"""An approval covers what the person was shown: when the table is reloaded while an event
waits, a verdict never runs an action that was not among those awaiting it, nor one of a
rule that asks for approval (renamed or new) without its own. On the real kube-apiserver."""

from __future__ import annotations

import pytest

from . import test_approvals as approvals
from .test_approvals import AUTH, outcomes, post_event, status, work

slack, web, responder_app = approvals.slack, approvals.web, approvals.responder_app

pytestmark = pytest.mark.slow
BEARER = {"Authorization": f"Bearer {AUTH}"}
LABEL_ONLY = """
defaults: {dry_run: false}
rules:
  - name: contain
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    approval: {required: true, timeout: 15m, on_timeout: skip}
    actions:
      - action: label-pod
        params: {labels: {suspect: "true"}}
"""
# Reloaded while the event waits: the same rule now also deletes the pod.
LABEL_AND_DELETE = LABEL_ONLY + """      - action: delete-pod
        params: {grace_period_seconds: 0}
"""
# Reloaded while the event waits: the rule renamed (it still asks for approval).
RENAMED = LABEL_AND_DELETE.replace("name: contain", "name: contain-v2")
NOT_APPROVED = "not among the actions awaiting approval"


def decide(app, verb, by="carol"):
    reply = app.test_client().post(f"/events/ev-1/{verb}", json={"by": by}, headers=BEARER)
    assert reply.status_code == 200, reply.get_json()


def reload(app, make_table, text):
    app.extensions["responder"].table = make_table(text)


def test_an_action_added_while_waiting_does_not_run_on_the_approval(
        cluster, web, responder_app, make_table):
    app = responder_app(LABEL_ONLY)
    post_event(app, cluster.namespace)
    assert [d["action"] for d in status(app)["decisions"]] == ["label-pod"]
    reload(app, make_table, LABEL_AND_DELETE)
    decide(app, "approve")
    work(app)
    (label, delete) = outcomes(status(app))
    assert label == ("label-pod", "done", None)
    assert delete[:2] == ("delete-pod", "skipped") and NOT_APPROVED in delete[2]
    assert cluster.pod("web") is not None


@pytest.mark.parametrize("verb", ["approve", "reject"])
def test_a_rule_renamed_while_waiting_does_not_act_without_approval(
        cluster, web, responder_app, make_table, verb):
    app = responder_app(LABEL_ONLY)
    post_event(app, cluster.namespace)
    reload(app, make_table, RENAMED)
    decide(app, verb)
    work(app)
    done = status(app)
    assert done["state"] == "done"
    assert all(outcome == "skipped" for _, outcome, _ in outcomes(done)), outcomes(done)
    pod = cluster.pod("web")
    assert pod is not None and "suspect" not in (pod.metadata.labels or {})
