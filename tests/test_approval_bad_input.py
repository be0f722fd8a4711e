"""Hostile input at the approval, undo and Slack endpoints: every bad request is a 4xx with a
JSON body naming the problem, never a 500; headers that cannot be a Slack signature are a
401 before anything is read; approver names are printable text, whatever the path."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from urllib.parse import urlencode

import pytest

from responder.approvals import ApprovalError, approver_name
from responder.interactions import parse_click
from responder.notify import SlackConfig

from .slackserver import SlackServer, click_payload, signed_interaction

SECRET = "review-signing-secret-0123456789"
AUTH = "bad-input-bearer"
BEARER = {"Authorization": f"Bearer {AUTH}"}
TABLE = """
rules:
  - name: contain
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    approval: {required: true}
    actions:
      - action: label-pod
        params: {labels: {suspect: "true"}}
"""
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
def app(make_app, make_table):
    with SlackServer() as slack:
        config = SlackConfig(token="xoxb-t", channel="#security", api_url=slack.api_url,
                             window_seconds=0, signing_secret=SECRET)
        yield make_app(make_table(TABLE), slack=config, auth_token=AUTH)


def signed(body: bytes, stamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """`body` signed as Slack signs it (whatever it holds)."""
    stamp_text = str(int(time.time()) if stamp is None else stamp)
    digest = hmac.new(SECRET.encode(), f"v0:{stamp_text}:".encode() + body, hashlib.sha256)
    return body, {"Content-Type": "application/x-www-form-urlencoded",
                  "X-Slack-Request-Timestamp": stamp_text,
                  "X-Slack-Signature": f"v0={digest.hexdigest()}"}


def assert_refused(reply, status: int, words: str) -> None:
    assert reply.status_code == status, reply.get_data()
    assert words in reply.get_json()["error"]


@pytest.mark.parametrize("headers", [
    {"X-Slack-Request-Timestamp": "9" * 400},       # an int too large for a float
    {"X-Slack-Signature": "v0=\u00e9" + "0" * 63},  # not ASCII: hmac cannot compare it
], ids=["huge-timestamp", "non-ascii-signature"])
def test_headers_that_cannot_be_a_signature_are_401_not_500(app, headers):
    body, good = signed_interaction(SECRET, click_payload("approve", "ev-1"))
    reply = app.test_client().post("/slack/interactions", data=body, headers={**good, **headers})
    assert_refused(reply, 401, "signature")


def test_a_signed_payload_nested_too_deep_is_400(app):
    body, headers = signed(urlencode({"payload": DEEP.decode()}).encode())
    reply = app.test_client().post("/slack/interactions", data=body, headers=headers)
    assert_refused(reply, 400, "payload")


@pytest.mark.parametrize("path", ["/events/ev-1/approve", "/events/ev-1/reject",
                                  "/events/ev-1/undo"])
def test_a_body_nested_too_deep_is_400(app, path):
    reply = app.test_client().post(path, data=DEEP, headers=BEARER)
    assert reply.status_code == 400, reply.get_data()
    assert "JSON" in reply.get_json()["error"]


@pytest.mark.parametrize("name", ["a\u2028b", "a\u0085b", "\ud800", "a\u200bb"],
                         ids=["line-separator", "c1-next-line", "lone-surrogate", "format"])
def test_approver_names_that_are_not_printable_are_400(app, name):
    with pytest.raises(ApprovalError):
        approver_name({"by": name})
    body = json.dumps({"by": name}).encode()  # escaped: the lone surrogate survives JSON
    reply = app.test_client().post("/events/ev-1/approve", data=body, headers=BEARER)
    assert_refused(reply, 400, '"by"')


def test_a_slack_name_with_control_characters_is_made_printable():
    payload = click_payload("approve", "ev-1", user_name="eve\n\x1b[2Jroot\u2028")
    body, _ = signed_interaction(SECRET, payload)
    name = parse_click(body).user_name
    assert name.isprintable() and name.startswith("eve")


def test_without_authentication_the_warning_names_approve_and_undo(make_app, make_table, capsys):
    make_app(make_table(TABLE))
    warning = next(line for line in capsys.readouterr().out.splitlines()
                   if "NO AUTHENTICATION" in line)
    assert "approve" in warning and "undo" in warning
