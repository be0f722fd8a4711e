"""The approval feature's parts without a cluster: the table's `approval` key, the Slack
settings, the message builder, the click parser and the signature check, the journal's
waiting state, and the inline intake's refusal."""

from __future__ import annotations

import json
import logging
import time

import pytest
from kubernetes.client import ApiClient

from responder.approvals import (
    ApprovalError,
    Approvals,
    approver_name,
    new_record,
    timeout_verdict,
)
from responder.errors import ConfigError, TableError
from responder.events import event_from_dict
from responder.interactions import InteractionError, SlackInteractions, parse_click
from responder.journal import AWAITING, Closing, EventStore
from responder.notify import SlackConfig
from responder.notify.approval import build_approval_message
from responder.notify.config import slack_status
from responder.settings import Settings
from responder.table import Approval

from .netcat import netcat_event
from .slackserver import click_payload, signed_interaction

SECRET = "signing-secret-for-tests"
TABLE = """
defaults: {dry_run: false}
rules:
  - name: delete-on-approval
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    approval: %s
    actions:
      - action: delete-pod
"""


# --- the table -----------------------------------------------------------------------

@pytest.mark.parametrize("given, seconds", [
    ("{required: true, timeout: 30s}", 30), ("{timeout: 15m}", 900), ("{timeout: 2h}", 7200),
    ("{timeout: 90}", 90), ("{timeout: 1.5m}", 90), ("{required: true}", 900)])
def test_approval_timeouts_read_as_durations(make_table, given, seconds):
    rule = make_table(TABLE % given).rules[0]
    assert rule.approval == Approval(seconds, "skip")


def test_approval_on_timeout_run_and_not_required(make_table):
    assert make_table(TABLE % "{on_timeout: run}").rules[0].approval.on_timeout == "run"
    assert make_table(TABLE % "{required: false}").rules[0].approval is None
    assert make_table(TABLE % "{required: false}").needs_approval is False


@pytest.mark.parametrize("given, problem", [
    ("{timeout: 15x}", "approval.timeout: must be a positive duration"),
    ("{timeout: 0}", "approval.timeout: must be a positive duration"),
    ("{timeout: true}", "approval.timeout: must be a positive duration"),
    ("{on_timeout: maybe}", "approval.on_timeout: must be skip or run"),
    ("{required: yes please}", "approval.required: must be true or false"),
    ("{who: alice}", "approval.who: unknown key (known: on_timeout, required, timeout)"),
    ("yes", "approval: must be a mapping")])
def test_bad_approval_names_file_rule_and_key(make_table, given, problem):
    with pytest.raises(TableError) as caught:
        make_table(TABLE % given)
    text = str(caught.value)
    assert "test-table.yaml" in text and "rule #1 (delete-on-approval)" in text
    assert problem in text


# --- settings ------------------------------------------------------------------------

def test_signing_secret_needs_the_web_api(tmp_path):
    with pytest.raises(ConfigError, match="RESPONDER_SLACK_SIGNING_SECRET: only used with"):
        SlackConfig(webhook_url="https://hooks.slack.com/x", signing_secret=SECRET)
    with pytest.raises(ConfigError, match="RESPONDER_SLACK_APPROVERS: needs"):
        SlackConfig(token="xoxb-1", channel="C1", approvers=("U1AB",))
    with pytest.raises(ConfigError, match="need RESPONDER_SLACK_TOKEN"):
        SlackConfig.from_env({"RESPONDER_SLACK_SIGNING_SECRET": SECRET})


def test_signing_secret_from_a_file_and_approvers_parsed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    config = SlackConfig.from_env({"RESPONDER_SLACK_TOKEN": "xoxb-1",
                                   "RESPONDER_SLACK_CHANNEL": "C1",
                                   "RESPONDER_SLACK_SIGNING_SECRET_FILE": str(secret),
                                   "RESPONDER_SLACK_APPROVERS": "U0ALICE, W0BOB"})
    assert config.signing_secret == SECRET and config.approvers == ("U0ALICE", "W0BOB")
    assert SECRET not in repr(config) and SECRET not in json.dumps(config.describe())
    assert config.interactive
    with pytest.raises(ConfigError, match="RESPONDER_SLACK_APPROVERS: must be Slack user ids"):
        SlackConfig.from_env({"RESPONDER_SLACK_TOKEN": "xoxb-1", "RESPONDER_SLACK_CHANNEL": "C1",
                              "RESPONDER_SLACK_SIGNING_SECRET": SECRET,
                              "RESPONDER_SLACK_APPROVERS": "alice"})


def test_the_start_up_line_says_who_may_click_approve():
    config = SlackConfig(token="xoxb-1", channel="C1", signing_secret=SECRET)
    assert "anyone in C1 may click them (RESPONDER_SLACK_APPROVERS limits who)" in \
        slack_status(config)
    limited = SlackConfig(token="xoxb-1", channel="C1", signing_secret=SECRET,
                          approvers=("U0ALICE", "U0BOB"))
    assert "2 approver(s) in RESPONDER_SLACK_APPROVERS" in slack_status(limited)


def test_webhook_mode_says_approvals_only_work_over_http():
    status = slack_status(SlackConfig(webhook_url="https://hooks.slack.com/x"))
    assert "approvals only over HTTP" in status and "cannot show buttons" in status


def test_inline_intake_refuses_an_approval_table_at_start(make_app, make_table):
    with pytest.raises(ConfigError, match="RESPONDER_INTAKE=inline .* cannot wait"):
        make_app(make_table(TABLE % "{timeout: 5m}"), intake="inline")


def test_inline_intake_never_acts_without_approval_after_a_reload(make_app, make_table):
    # A client for a cluster nobody reaches: the waiting decision must not even try.
    app = make_app(make_table(TABLE % "{required: false}"), api_client=ApiClient(),
                   intake="inline")
    app.extensions["responder"].table = make_table(TABLE % "{timeout: 5m}")
    reply = app.test_client().post("/", data=json.dumps(netcat_event()))
    (decision,) = reply.get_json()["decisions"]
    assert decision["outcome"] == "skipped"
    assert "approval required, but RESPONDER_INTAKE=inline" in decision["reason"]


# --- the message ---------------------------------------------------------------------

def record(**changes):
    planned = [{"slot": "delete-on-approval:delete-pod#1", "table_rule": "delete-on-approval",
                "action": "delete-pod", "target": {"namespace": "shop", "pod": "web"},
                "check": None}]
    base = new_record({0: Approval(900, "skip")}, planned, 1_700_000_000.0)
    return {**base, **changes}


def test_waiting_message_lists_actions_and_carries_the_buttons():
    event = event_from_dict(netcat_event("u-9"))
    message = build_approval_message(event, record(), (), interactive=True)
    blocks = message["attachments"][0]["blocks"]
    (actions,) = [b for b in blocks if b["type"] == "actions"]
    assert [(e["action_id"], e["value"], e["style"]) for e in actions["elements"]] == [
        ("approve", "u-9", "primary"), ("reject", "u-9", "danger")]
    text = json.dumps(blocks)
    assert "`delete-pod` on namespace shop, pod web (delete-on-approval): awaiting approval " \
           "(ready)" in text
    assert "requested 2023-11-14T22:13:20+00:00" in text
    assert "until 2023-11-14T22:28:20+00:00" in text  # 15 minutes later
    assert "approval needed (delete-pod)" in message["text"]


def test_webhook_message_has_no_buttons_and_says_how_to_approve():
    event = event_from_dict(netcat_event("u-9"))
    message = build_approval_message(event, record(), (), interactive=False)
    blocks = message["attachments"][0]["blocks"]
    assert not [b for b in blocks if b["type"] == "actions"]
    assert "responder approve u-9 --to URL" in json.dumps(blocks)


def test_decided_message_names_the_approver_and_drops_the_buttons():
    event = event_from_dict(netcat_event("u-9"))
    verdict = {"decision": "rejected", "by": "<!channel>", "via": "slack", "user_id": "U0BOB",
               "at": 1_700_000_060.0}
    message = build_approval_message(event, record(verdict=verdict), (), interactive=True)
    text = json.dumps(message["attachments"][0]["blocks"])
    assert "actions" not in [b["type"] for b in message["attachments"][0]["blocks"]]
    assert "*Rejected* by <@U0BOB> (&lt;!channel&gt;)" in text  # a hostile name escaped
    assert "not run" in text


def test_timeout_verdict_follows_on_timeout():
    assert timeout_verdict(record(), 5.0)["decision"] == "timed-out"
    assert timeout_verdict(record(on_timeout="run"), 5.0) == {
        "decision": "approved", "by": "timeout", "via": "timeout", "at": 5.0}


def test_several_waiting_rules_take_the_shortest_timeout_and_skip_wins():
    both = new_record({0: Approval(600, "run"), 1: Approval(60, "skip")},
                      record()["planned"], 0.0)
    assert (both["deadline"], both["on_timeout"]) == (60, "skip")


# --- clicks and signatures -----------------------------------------------------------

@pytest.mark.parametrize("body, problem", [
    (b"not a form", "form-encoded payload"),
    (b"payload=%7Bnot+json", "form-encoded payload"),
    (b"payload=%5B%5D", "block_actions"),
    (b"payload=" + json.dumps({"type": "block_actions"}).encode(), "payload.user.id")])
def test_payloads_that_are_not_slacks_shape_are_refused(body, problem):
    with pytest.raises(InteractionError, match=problem):
        parse_click(body)


def test_a_click_is_read_from_slacks_payload():
    body, _ = signed_interaction(SECRET, click_payload("approve", "u-9"))
    click = parse_click(body)
    assert (click.action_id, click.value, click.user_id, click.user_name, click.channel) == (
        "approve", "u-9", "U0ALICE", "alice", "C123")


@pytest.fixture
def store(tmp_path):
    events = EventStore(tmp_path)
    yield events
    events.close()


def wait_for_approval(store, key="u-9", deadline=60.0):
    store.add(key, json.dumps(netcat_event(key)).encode())
    (claimed,) = store.claim(10, 60)
    store.finish_many([Closing(claimed.id, AWAITING, None, {},
                               approval={**record(), "deadline": time.time() + deadline})])
    return claimed


def test_signature_window_and_forgery_leave_the_event_waiting(store):
    wait_for_approval(store)
    told = []
    handler = SlackInteractions(SECRET, (), Approvals(store, lambda: None),
                                lambda *args: told.append(args))
    for secret, stamp in ((SECRET, int(time.time()) - 301), ("forged", None)):
        body, headers = signed_interaction(secret, click_payload("approve", "u-9"), stamp)
        assert handler.handle(body, headers)[0] == 401
    body, headers = signed_interaction(SECRET, click_payload("approve", "u-9"))
    assert handler.handle(body, {**headers, "X-Slack-Request-Timestamp": "soon"})[0] == 401
    assert store.status("u-9")["state"] == AWAITING
    assert handler.handle(body, headers)[0] == 200
    assert store.status("u-9")["state"] == "pending"
    assert SECRET not in repr(handler)


def test_waiting_events_are_not_queue_depth_and_come_back_when_decided(store):
    wait_for_approval(store)
    assert store.pending() == 0  # nothing to do until someone decides
    approvals = Approvals(store, lambda: None)
    assert approvals.decide("u-9", "approve", "carol", "http")[0] == 200
    assert store.pending() == 1
    status, body = approvals.decide("u-9", "reject", "dave", "http")
    assert (status, body["state"]) == (409, "pending")
    assert "already approved by carol (HTTP)" in body["error"]
    assert approvals.decide("nope", "approve", "carol", "http")[0] == 404


def test_the_deadline_passes_in_the_journal(store):
    wait_for_approval(store, deadline=30)
    assert store.expire_approvals(lambda r: timeout_verdict(r, 0.0)) == []
    store.clock = lambda: time.time() + 31
    assert store.expire_approvals(lambda r: timeout_verdict(r, 0.0)) == ["u-9"]
    assert store.status("u-9")["approval"]["verdict"]["decision"] == "timed-out"
    assert store.pending() == 1 and store.prune(0) == 0  # waiting is not finished


@pytest.mark.parametrize("body", [None, {}, {"by": ""}, {"by": 5}, {"by": "a\nb"},
                                  {"by": "x" * 129}])
def test_http_approver_names_are_checked(body):
    with pytest.raises(ApprovalError):
        approver_name(body)


def test_decision_lines_carry_the_approval(logs, monkeypatch):
    from responder.executor import log_decision_fields

    monkeypatch.setattr(logging.getLogger("responder"), "propagate", True)
    log_decision_fields({"rule": "r", "table_rule": "t", "action": "delete-pod",
                         "target": {}, "outcome": "done", "dry_run": False, "uuid": "u",
                         "reason": None, "approval": "approved by alice (Slack U0ALICE)"})
    (line,) = [r for r in logs.records if hasattr(r, "decision")]
    assert "approval='approved by alice (Slack U0ALICE)'" in line.getMessage()


def test_settings_list_the_new_slack_variables():
    from responder.settings import all_variables

    names = all_variables()
    assert {"RESPONDER_SLACK_SIGNING_SECRET", "RESPONDER_SLACK_SIGNING_SECRET_FILE",
            "RESPONDER_SLACK_APPROVERS"} <= set(names)
    assert Settings.of(slack_token="xoxb-1", slack_channel="C1",
                       slack_signing_secret=SECRET).slack.interactive


def test_a_dry_run_approval_rule_does_not_wait(make_app, make_table):
    # Nothing would change the cluster: nobody is asked (and no API is called).
    text = (TABLE % "{timeout: 5m}").replace("dry_run: false", "dry_run: true")
    app = make_app(make_table(text), api_client=ApiClient())
    app.test_client().post("/", data=json.dumps(netcat_event()))
    app.extensions["worker"].run_pending()
    state = app.test_client().get("/events/u-1").get_json()
    assert state["state"] == "done" and "approval" not in state
    assert state["decisions"][0]["outcome"] == "would-run"


def _report(action, outcome, dry_run=False):
    from responder.actions import Outcome, Result, Target
    from responder.decisions import Decision
    from responder.executor import ActionReport

    target = Target("shop", "web")
    decision = Decision("delete-on-approval", action, {}, target, ("namespace", "pod"), dry_run)
    return ActionReport(decision, target, Result(Outcome(outcome)))


@pytest.mark.parametrize("reports, offered", [
    ([_report("label-pod", "done")], True),
    ([_report("isolate-pod", "already-done")], True),
    ([_report("delete-pod", "done")], False),  # a deletion cannot be undone
    ([_report("label-pod", "would-run", dry_run=True)], False),  # nothing was done
    ([_report("label-pod", "skipped")], False),
])
def test_undo_is_offered_only_after_an_action_that_can_be_undone_acted(reports, offered):
    event = event_from_dict(netcat_event("u-9"))
    verdict = {"decision": "approved", "by": "alice", "via": "http", "at": 1_700_000_060.0}
    message = build_approval_message(event, record(verdict=verdict), reports, interactive=True,
                                     undoable={"label-pod", "isolate-pod", "cordon-node"})
    blocks = message["attachments"][0]["blocks"]
    buttons = [e["action_id"] for b in blocks if b["type"] == "actions" for e in b["elements"]]
    assert buttons == (["undo"] if offered else [])
    webhook = build_approval_message(event, record(verdict=verdict), reports,
                                     interactive=False, undoable={"label-pod", "isolate-pod"})
    assert "actions" not in [b["type"] for b in webhook["attachments"][0]["blocks"]]
