"""A person in the loop, end to end: an approval rule's actions wait (planned and
pre-checked, state awaiting-approval), Slack shows them with Approve/Reject buttons, a
signed click (or HTTP, or the CLI) decides, and the worker acts on the real kube-apiserver
with every check made again; timeouts, replays, forgeries, the allow-list and restarts."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from werkzeug.serving import make_server

from responder.cli import main
from responder.notify import SlackConfig

from .netcat import FULL_CID, netcat_event
from .slackserver import (
    EPHEMERAL_PATH,
    POST_MESSAGE_PATH,
    UPDATE_PATH,
    SlackServer,
    click_payload,
    signed_interaction,
)

pytestmark = pytest.mark.slow
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TOKEN = "xoxb-test-token"
AUTH = "approval-test-bearer"
TABLE = """
defaults: {dry_run: false}
rules:
  - name: label-first
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {suspect: "true"}}
  - name: delete-on-approval
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    approval: {required: true, timeout: %s, on_timeout: %s}
    actions:
      - action: delete-pod
        params: {grace_period_seconds: 0}
"""


def table(timeout="15m", on_timeout="skip"):
    return TABLE % (timeout, on_timeout)


@pytest.fixture
def slack():
    with SlackServer() as server:
        yield server


@pytest.fixture
def web(cluster):
    node = cluster.add_node("node-a").metadata.name
    cluster.add_node("node-b")
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    return node


@pytest.fixture
def responder_app(apiserver, make_app, make_table, slack, tmp_path):
    """An app (queue intake, worker driven by the test) with Slack in Web API mode and
    interactions on; the same state dir each call, so a second call is a restart."""
    def make(text=None, approvers=None, state="state", **settings):
        config = SlackConfig(token=TOKEN, channel="#security", api_url=slack.api_url,
                             window_seconds=0, signing_secret=SECRET,
                             approvers=tuple(approvers or ()))
        return make_app(make_table(text or table()), api_client=apiserver.api_client(),
                        slack=config, state_dir=str(tmp_path / state), auth_token=AUTH,
                        **settings)
    return make


def post_event(app, namespace, uuid="ev-1"):
    reply = app.test_client().post("/", data=json.dumps(netcat_event(uuid, namespace=namespace)),
                                   headers={"Authorization": f"Bearer {AUTH}"})
    assert reply.status_code == 202, reply.get_json()
    work(app)


def work(app):
    """Run the worker, then wait for Slack (the notifier's thread) and the audit Events."""
    app.extensions["worker"].run_pending()
    responder = app.extensions["responder"]
    responder.notifier.flush(10)
    if hasattr(responder.audit, "wait"):
        responder.audit.wait(10)


def status(app, uuid="ev-1"):
    reply = app.test_client().get(f"/events/{uuid}", headers={"Authorization": f"Bearer {AUTH}"})
    return reply.get_json()


def click(app, action_id, uuid="ev-1", secret=SECRET, timestamp=None, **who):
    body, headers = signed_interaction(secret, click_payload(action_id, uuid, **who), timestamp)
    return app.test_client().post("/slack/interactions", data=body, headers=headers)


def outcomes(state):
    return [(d["action"], d["outcome"], d.get("reason")) for d in state["decisions"]]


def attachment_text(message):
    blocks = message["attachments"][0]["blocks"]
    return "\n".join(b.get("text", {}).get("text", "") for b in blocks if b["type"] == "section")


def buttons_of(message):
    blocks = message["attachments"][0]["blocks"]
    return [e for b in blocks if b["type"] == "actions" for e in b["elements"]]


def test_approve_in_slack_deletes_the_pod_and_updates_the_message(cluster, web, slack,
                                                                  responder_app):
    app = responder_app()
    post_event(app, cluster.namespace)
    waiting = status(app)
    assert waiting["state"] == "awaiting-approval"
    # The rule without approval acted at once; the delete waits, pre-checked ("ready").
    assert outcomes(waiting) == [("label-pod", "done", None),
                                 ("delete-pod", "awaiting-approval", None)]
    assert waiting["approval"]["rules"] == ["delete-on-approval"]
    assert waiting["approval"]["decision"] is None
    assert cluster.pod("web") is not None
    (message,) = slack.state.answered(POST_MESSAGE_PATH)
    assert [(b["action_id"], b["value"]) for b in buttons_of(message)] == [
        ("approve", "ev-1"), ("reject", "ev-1")]
    text = attachment_text(message)
    assert f"`delete-pod` on namespace {cluster.namespace}, pod web" in text
    assert "awaiting approval (ready)" in text and "Waiting for approval" in text
    assert waiting["approval"]["slack"] == {"channel": "C123", "ts": "1.0"}

    reply = click(app, "approve")
    assert reply.status_code == 200 and reply.get_json()["ok"] is True
    work(app)
    done = status(app)
    assert done["state"] == "done"
    assert outcomes(done) == [("label-pod", "done", None), ("delete-pod", "done", None)]
    assert cluster.pod("web") is None  # deleted on the real API server
    assert done["approval"]["decision"] == "approved"
    assert (done["approval"]["by"], done["approval"]["via"],
            done["approval"]["user_id"]) == ("alice", "slack", "U0ALICE")
    updates = slack.state.answered(UPDATE_PATH)
    assert all((u["channel"], u["ts"]) == ("C123", "1.0") for u in updates)
    final = updates[-1]
    # Approve and Reject are gone; the label it put on can be undone (the deletion cannot).
    assert [b["action_id"] for b in buttons_of(final)] == ["undo"]
    assert "*Approved* by <@U0ALICE> (alice)" in attachment_text(final)
    assert "`delete-pod` on namespace" in attachment_text(final)
    assert "done" in attachment_text(final).split("`delete-pod`")[1]
    # The audit Event on the pod names the approver.
    messages = [e.message for e in cluster.events() if e.action == "delete-pod"]
    assert messages and "approved by alice (Slack U0ALICE)" in messages[0]


def test_reject_in_slack_skips_the_action_and_says_who(cluster, web, slack, responder_app,
                                                       logs, monkeypatch):
    app = responder_app()
    # The app's log set-up stops propagation; caplog listens at the root.
    monkeypatch.setattr(logging.getLogger("responder"), "propagate", True)
    post_event(app, cluster.namespace)
    assert click(app, "reject", user_id="U0BOB", user_name="bob").status_code == 200
    work(app)
    done = status(app)
    assert outcomes(done)[1] == ("delete-pod", "skipped", "rejected by bob (Slack U0BOB)")
    assert cluster.pod("web") is not None
    assert "*Rejected* by <@U0BOB> (bob)" in attachment_text(slack.state.answered(UPDATE_PATH)[-1])
    records = [r.decision for r in logs.records if hasattr(r, "decision")
               and r.decision["action"] == "delete-pod"]
    assert records[-1]["approval"] == "rejected by bob (Slack U0BOB)"


@pytest.mark.parametrize("on_timeout, expected", [
    ("skip", ("delete-pod", "skipped", "approval timed out")),
    ("run", ("delete-pod", "done", None))])
def test_timeout_applies_on_timeout(cluster, web, slack, responder_app, on_timeout, expected):
    app = responder_app(table("30s", on_timeout))
    post_event(app, cluster.namespace)
    store = app.extensions["store"]
    assert app.extensions["worker"].expire_approvals() == []  # not yet
    store.clock = lambda: time.time() + 31  # half a minute later
    work(app)
    done = status(app)
    assert outcomes(done)[1] == expected
    assert (cluster.pod("web") is None) == (on_timeout == "run")
    assert done["approval"]["via"] == "timeout"
    decision = "approved" if on_timeout == "run" else "timed-out"
    assert f'responder_approvals_total{{decision="{decision}",via="timeout"}} 1.0' in \
        app.test_client().get("/metrics").get_data(as_text=True)
    # Too late for a click now: refused, the user told why.
    assert click(app, "approve").get_json()["ok"] is False
    app.extensions["responder"].notifier.flush(10)
    slack_text = [m["text"] for m in slack.state.answered(EPHEMERAL_PATH)]
    assert slack_text and ("approval timed out" in slack_text[-1]
                           or "already approved by timeout" in slack_text[-1])


def test_replayed_and_forged_interactions_do_nothing(cluster, web, slack, responder_app):
    app = responder_app()
    post_event(app, cluster.namespace)
    stale = click(app, "approve", timestamp=int(time.time()) - 600)
    forged = click(app, "approve", secret="not-the-signing-secret")
    assert (stale.status_code, forged.status_code) == (401, 401)
    unsigned = app.test_client().post("/slack/interactions", data=b"payload=%7B%7D",
                                      content_type="application/x-www-form-urlencoded")
    assert unsigned.status_code == 401
    work(app)
    assert status(app)["state"] == "awaiting-approval"
    assert cluster.pod("web") is not None
    assert slack.state.answered(UPDATE_PATH) == []


def test_a_signed_request_that_is_not_a_click_is_400(cluster, web, responder_app):
    app = responder_app()
    body, headers = signed_interaction(SECRET, {"type": "view_submission"})
    reply = app.test_client().post("/slack/interactions", data=body, headers=headers)
    assert reply.status_code == 400 and "block_actions" in reply.get_json()["error"]
    payload = click_payload("undo-everything", "ev-1")
    body, headers = signed_interaction(SECRET, payload)
    reply = app.test_client().post("/slack/interactions", data=body, headers=headers)
    assert reply.status_code == 400 and "unknown action" in reply.get_json()["error"]


def test_approver_not_on_the_allow_list_is_refused_and_told(cluster, web, slack,
                                                            responder_app):
    app = responder_app(approvers=["U0ALICE"])
    post_event(app, cluster.namespace)
    reply = click(app, "approve", user_id="U0MALLORY", user_name="mallory")
    assert reply.status_code == 200 and reply.get_json()["ok"] is False
    app.extensions["responder"].notifier.flush(10)
    (told,) = slack.state.answered(EPHEMERAL_PATH)
    assert told["user"] == "U0MALLORY" and "not allowed" in told["text"]
    work(app)
    assert status(app)["state"] == "awaiting-approval"
    assert cluster.pod("web") is not None
    assert click(app, "approve").get_json()["ok"] is True  # alice may
    work(app)
    assert cluster.pod("web") is None


def test_restart_while_awaiting_loses_nothing(cluster, web, slack, responder_app):
    first = responder_app()
    post_event(first, cluster.namespace)
    before = status(first)
    from responder.app import shutdown
    shutdown(first)
    second = responder_app()  # same state dir: a new process after a restart
    assert status(second) == before
    assert click(second, "approve").get_json()["ok"] is True
    work(second)
    assert outcomes(status(second))[1] == ("delete-pod", "done", None)
    assert cluster.pod("web") is None
    # The restarted process updated the message the first one posted.
    assert slack.state.answered(UPDATE_PATH)[-1]["ts"] == "1.0"
    assert len(slack.state.answered(POST_MESSAGE_PATH)) == 1


def test_a_request_slack_never_got_is_posted_again_at_restart(cluster, web, slack,
                                                               responder_app):
    slack.state.fail(500, times=2)  # the post and its one retry
    first = responder_app()
    post_event(first, cluster.namespace)
    assert slack.state.answered(POST_MESSAGE_PATH) == []
    assert status(first)["approval"].get("slack") is None
    from responder.app import shutdown
    shutdown(first)
    second = responder_app()
    second.extensions["worker"].take_over()  # what the worker does when it starts
    second.extensions["responder"].notifier.flush(10)
    (message,) = slack.state.answered(POST_MESSAGE_PATH)
    assert [b["action_id"] for b in buttons_of(message)] == ["approve", "reject"]
    assert status(second)["approval"]["slack"] == {"channel": "C123", "ts": "1.0"}


def test_http_approve_and_reject_answers(cluster, web, responder_app):
    app = responder_app()
    post_event(app, cluster.namespace)
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {AUTH}"}
    assert client.post("/events/ev-1/approve", json={"by": "carol"}).status_code == 401
    missing = client.post("/events/nope/approve", json={"by": "carol"}, headers=bearer)
    assert missing.status_code == 404 and "nope" in missing.get_json()["error"]
    nameless = client.post("/events/ev-1/approve", json={}, headers=bearer)
    assert nameless.status_code == 400 and '"by"' in nameless.get_json()["error"]
    ok = client.post("/events/ev-1/reject", json={"by": "carol"}, headers=bearer)
    assert ok.status_code == 200 and ok.get_json()["approval"]["by"] == "carol"
    again = client.post("/events/ev-1/approve", json={"by": "dave"}, headers=bearer)
    assert again.status_code == 409
    assert again.get_json()["state"] == "pending"
    assert "already rejected by carol (HTTP)" in again.get_json()["error"]
    work(app)
    late = client.post("/events/ev-1/approve", json={"by": "dave"}, headers=bearer)
    assert (late.status_code, late.get_json()["state"]) == (409, "done")
    assert outcomes(status(app))[1] == ("delete-pod", "skipped", "rejected by carol (HTTP)")
    assert cluster.pod("web") is not None
    exposition = client.get("/metrics").get_data(as_text=True)
    assert 'responder_approvals_total{decision="rejected",via="http"} 1.0' in exposition


def test_pod_replaced_before_approval_is_skipped_with_its_reason(cluster, web, responder_app):
    app = responder_app()
    post_event(app, cluster.namespace)
    cluster.core.delete_namespaced_pod("web", cluster.namespace, grace_period_seconds=0)
    replacement = cluster.add_pod("web", node=web, container_ids=("f" * 64,), owner=None)
    assert click(app, "approve").get_json()["ok"] is True
    work(app)
    (_, outcome, reason) = outcomes(status(app))[1]
    assert outcome == "skipped" and "container not in pod" in reason
    assert cluster.pod("web").metadata.uid == replacement.metadata.uid


def test_interactions_are_404_without_a_signing_secret(cluster, apiserver, make_app,
                                                       make_table):
    app = make_app(make_table(table()), api_client=apiserver.api_client())
    body, headers = signed_interaction(SECRET, click_payload("approve", "ev-1"))
    assert app.test_client().post("/slack/interactions", data=body,
                                  headers=headers).status_code == 404


def printed(capsys):
    """The CLI's reply line (the app serving in this process logs to stdout too)."""
    lines = capsys.readouterr().out.splitlines()
    return json.loads(next(line for line in lines if line.startswith('{"status"')))


def test_cli_approves_against_a_running_app(cluster, web, responder_app, capsys):
    app = responder_app()
    post_event(app, cluster.namespace)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert main(["approve", "ev-1", "--to", url, "--token", AUTH, "--as", "erin"]) == 0
        reply = printed(capsys)
        assert reply["status"] == 200 and reply["reply"]["approval"]["by"] == "erin"
        assert main(["reject", "ev-1", "--to", url, "--token", AUTH]) == 1
        assert printed(capsys)["status"] == 409
        assert main(["approve", "ev-1", "--to", url]) == 1  # no token
        assert printed(capsys)["status"] == 401
    finally:
        server.shutdown()
        thread.join(5)
    work(app)
    assert cluster.pod("web") is None
    assert status(app)["approval"]["via"] == "http"


LIMITED = table().replace("defaults: {dry_run: false}",
                          "defaults: {dry_run: false, max_pod_deletions_per_minute: 1}")


def test_a_limit_reached_while_waiting_skips_the_second_approval(cluster, web, responder_app):
    cluster.add_pod("api", node=web, container_ids=("a" * 64,))
    app = responder_app(LIMITED)
    post_event(app, cluster.namespace, "ev-1")
    other = netcat_event("ev-2", namespace=cluster.namespace, pod="api")
    other["output_fields"]["container.id"] = "a" * 12
    app.test_client().post("/", data=json.dumps(other),
                           headers={"Authorization": f"Bearer {AUTH}"})
    work(app)
    # Both pre-checked "ready": the pre-check holds no place in the limit.
    assert [status(app, u)["decisions"][1]["outcome"] for u in ("ev-1", "ev-2")] == [
        "awaiting-approval", "awaiting-approval"]
    assert "reason" not in status(app, "ev-2")["decisions"][1]
    assert click(app, "approve", "ev-1").get_json()["ok"] is True
    assert click(app, "approve", "ev-2").get_json()["ok"] is True
    work(app)
    assert outcomes(status(app, "ev-1"))[1] == ("delete-pod", "done", None)
    assert outcomes(status(app, "ev-2"))[1] == (
        "delete-pod", "skipped", "pod deletion limit reached (1 per minute)")
    assert cluster.pod("api") is not None


def test_the_running_worker_acts_as_soon_as_approved(cluster, web, responder_app):
    app = responder_app(start_worker=True, worker="thread")
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {AUTH}"}
    client.post("/", data=json.dumps(netcat_event("ev-1", namespace=cluster.namespace)),
                headers=bearer)
    assert wait_for(lambda: status(app)["state"] == "awaiting-approval")
    assert client.post("/events/ev-1/approve", json={"by": "frank"},
                       headers=bearer).status_code == 200
    assert wait_for(lambda: status(app)["state"] == "done")
    assert cluster.pod("web") is None


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_webhook_mode_asks_without_buttons_and_approval_works_over_http(
        cluster, web, slack, apiserver, make_app, make_table, capsys):
    app = make_app(make_table(table()), api_client=apiserver.api_client(),
                   slack=SlackConfig(webhook_url=slack.webhook_url, window_seconds=0))
    # The start-up log (the app's own handler writes to stdout).
    assert "approvals only over HTTP" in capsys.readouterr().out
    app.test_client().post("/", data=json.dumps(netcat_event("ev-1", namespace=cluster.namespace)))
    work(app)
    (asked,) = slack.state.bodies()
    assert buttons_of(asked) == []
    assert "responder approve ev-1 --to URL" in attachment_text(asked)
    assert app.test_client().post("/events/ev-1/approve", json={"by": "gina"}).status_code == 200
    work(app)
    assert cluster.pod("web") is None
    told = slack.state.bodies()[-1]  # an incoming webhook cannot edit: a new message
    assert "*Approved* by gina (over HTTP)" in attachment_text(told)


def test_a_storm_for_one_pod_asks_once(cluster, web, slack, responder_app):
    app = responder_app()
    post_event(app, cluster.namespace, "ev-1")
    post_event(app, cluster.namespace, "ev-2")  # the same pod, the same table rule
    second = status(app, "ev-2")
    assert second["state"] == "done"
    assert outcomes(second)[1] == ("delete-pod", "coalesced", "the same table rule and target "
                                   "already await approval (event ev-1)")
    asked = [m for m in slack.state.answered(POST_MESSAGE_PATH) if buttons_of(m)]
    assert len(asked) == 1
    assert click(app, "approve", "ev-1").get_json()["ok"] is True
    work(app)
    assert cluster.pod("web") is None
    post_event(app, cluster.namespace, "ev-3")  # decided meanwhile: a new request
    assert status(app, "ev-3")["state"] == "awaiting-approval"


def test_the_pre_check_says_what_would_be_skipped_and_uses_no_limit(cluster, web, slack,
                                                                   responder_app):
    cluster.add_pod("agent", node=web, container_ids=("b" * 64,), owner="DaemonSet")
    app = responder_app(LIMITED)
    event = netcat_event("ev-1", namespace=cluster.namespace, pod="agent")
    event["output_fields"]["container.id"] = "b" * 12
    app.test_client().post("/", data=json.dumps(event), headers={"Authorization": f"Bearer {AUTH}"})
    work(app)
    waiting = status(app)["decisions"][1]
    assert waiting["outcome"] == "awaiting-approval"
    assert waiting["reason"].startswith("would be skipped now: ") and "DaemonSet" in \
        waiting["reason"]
    (message,) = slack.state.answered(POST_MESSAGE_PATH)
    assert "would be skipped now:" in attachment_text(message)
    # The pre-check of a deletion held no place in the one-per-minute limit.
    post_event(app, cluster.namespace, "ev-2")
    assert click(app, "approve", "ev-2").get_json()["ok"] is True
    work(app)
    assert outcomes(status(app, "ev-2"))[1] == ("delete-pod", "done", None)
