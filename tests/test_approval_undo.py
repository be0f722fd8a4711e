"""The Undo button on an approval's Slack message: offered once an action that can be undone
has acted, behind a confirmation; a signed click undoes it on the real kube-apiserver and
the clicking user is told what came of it; the allow-list holds for Undo too."""

from __future__ import annotations

import pytest
from kubernetes import client

from . import test_approvals as approvals
from .slackserver import EPHEMERAL_PATH, POST_MESSAGE_PATH, UPDATE_PATH
from .test_approvals import buttons_of, click, post_event, status, work

# The approval tests' fixtures: a Slack stand-in, a pod on a node, an app with interactions.
slack, web, responder_app = approvals.slack, approvals.web, approvals.responder_app

pytestmark = pytest.mark.slow
TABLE = """
defaults: {dry_run: false}
rules:
  - name: isolate-on-approval
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    approval: {required: true, timeout: 15m, on_timeout: skip}
    actions:
      - action: isolate-pod
      - action: label-pod
        params: {labels: {suspect: "true"}}
"""


def policies(cluster):
    networking = client.NetworkingV1Api(cluster.core.api_client)
    return [p.metadata.name for p in
            networking.list_namespaced_network_policy(cluster.namespace).items]


def approved(cluster, make, **app):
    app = make(TABLE, **app)
    post_event(app, cluster.namespace)
    assert click(app, "approve").get_json()["ok"] is True
    work(app)
    assert status(app)["state"] == "done"
    return app


def test_undo_is_offered_after_approval_and_puts_the_pod_back(cluster, web, slack,
                                                              responder_app):
    app = approved(cluster, responder_app)
    assert policies(cluster) and cluster.pod("web").metadata.labels.get("suspect") == "true"
    final = slack.state.answered(UPDATE_PATH)[-1]
    (undo,) = buttons_of(final)
    assert (undo["action_id"], undo["value"]) == ("undo", "ev-1")
    assert undo["confirm"]["confirm"]["text"] == "Undo"  # one stray click does nothing

    reply = click(app, "undo", user_id="U0CAROL", user_name="carol")
    assert reply.status_code == 200 and reply.get_json()["outcome"] == "undone"
    work(app)
    assert policies(cluster) == []
    labels = cluster.pod("web").metadata.labels or {}
    assert "suspect" not in labels and "falco-responder.io/isolated" not in labels
    (undo_record,) = status(app)["undos"]
    assert undo_record["by"] == "carol (Slack U0CAROL)"
    told = slack.state.answered(EPHEMERAL_PATH)[-1]
    assert told["user"] == "U0CAROL" and "Undo of event ev-1: undone." in told["text"]
    assert "isolate-pod on " in told["text"]
    # The undo's own message goes to the channel, beside the approval message.
    assert any("undo" in m["text"].lower() for m in slack.state.answered(POST_MESSAGE_PATH)[1:])


def test_a_second_undo_click_is_already_undone(cluster, web, slack, responder_app):
    app = approved(cluster, responder_app)
    click(app, "undo")
    reply = click(app, "undo")
    assert reply.get_json()["outcome"] == "already-undone"


def test_undo_by_someone_off_the_allow_list_is_refused_and_changes_nothing(
        cluster, web, slack, responder_app):
    app = approved(cluster, responder_app, approvers=("U0ALICE",))
    reply = click(app, "undo", user_id="U0MALLORY", user_name="mallory")
    assert reply.get_json()["ok"] is False
    app.extensions["responder"].notifier.flush(10)
    assert policies(cluster)  # still isolated
    told = slack.state.answered(EPHEMERAL_PATH)[-1]
    assert told["user"] == "U0MALLORY" and "not in RESPONDER_SLACK_APPROVERS" in told["text"]
    assert "undos" not in status(app)


def test_undo_of_an_event_still_waiting_is_refused_with_the_reason(cluster, web, slack,
                                                                   responder_app):
    app = responder_app(TABLE)
    post_event(app, cluster.namespace)
    reply = click(app, "undo")
    assert reply.status_code == 200 and reply.get_json()["status"] == 409
    app.extensions["responder"].notifier.flush(10)
    assert "Not undone: event ev-1 is still awaiting-approval" in \
        slack.state.answered(EPHEMERAL_PATH)[-1]["text"]
    assert policies(cluster) == []  # nothing acted while it waits, nothing undone
    assert status(app)["state"] == "awaiting-approval"


AUTOMATIC = """
defaults: {dry_run: false}
rules:
  - name: isolate-at-once
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: isolate-pod
"""


def test_an_automatic_response_is_offered_undo_in_its_own_message(cluster, web, slack,
                                                                   responder_app):
    app = responder_app(AUTOMATIC)
    post_event(app, cluster.namespace)
    assert status(app)["state"] == "done" and policies(cluster)
    (message,) = slack.state.answered(POST_MESSAGE_PATH)
    assert [(b["action_id"], b["value"]) for b in buttons_of(message)] == [("undo", "ev-1")]
    assert click(app, "undo").get_json()["outcome"] == "undone"
    assert policies(cluster) == []
