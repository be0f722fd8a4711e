"""The alert page's controls through Flask's test client: the name given at login, the
approval record, Approve / Reject / Undo as CSRF-guarded forms calling the same code as the
HTTP endpoints (on the real kube-apiserver), refusals shown as messages, the undo history,
a read-only console showing no form and refusing every POST, hostile names escaped."""

from __future__ import annotations

import html
import json
import re

import pytest

from responder.approvals import approver_text, audit_note
from responder.console.controls import approval_view, undo_summary
from responder.console.session import Sessions, login_name
from responder.notify.approval import who

from .netcat import FULL_CID, netcat_event
from .test_approvals import table

TOKEN = "controls-console-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APPROVAL = table()  # the approval tests' table: label now, delete on approval
DRY = """
defaults: {dry_run: true}
rules:
  - name: label-netcat
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {suspect: "true"}}
"""
HOSTILE = "<script>alert('x')</script>"


def page(client, path, status=200):
    reply = client.get(path)
    assert reply.status_code == status, reply.data[:500]
    return reply.get_data(as_text=True)


def log_in(client, name="", token=TOKEN):
    form = page(client, "/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    return client.post("/ui/login", data={"token": token, "csrf": csrf, "name": name,
                                          "next": "/ui/alerts"})


def csrf_of(client):
    return re.search(r'data-csrf="([^"]*)"', page(client, "/ui/alerts")).group(1)


def post_event(app, client, uuid="ev-1", namespace="shop", headers=AUTH):
    reply = client.post("/", data=json.dumps(netcat_event(uuid, namespace=namespace)),
                        headers=headers, content_type="application/json")
    assert reply.status_code == 202, reply.get_json()
    app.extensions["worker"].run_pending()


def control(client, uuid, verb, csrf):
    """A control's POST; the alert page it redirects to (followed)."""
    reply = client.post(f"/ui/alerts/{uuid}/{verb}", data={"csrf": csrf})
    assert reply.status_code == 302, reply.data[:500]
    assert reply.location.startswith(f"/ui/alerts/{uuid}?said=")
    return reply.location


def said(client, location, status=200):
    text = page(client, location, status)
    return html.unescape(re.search(r'<p class="(?:ok|error)" id="said">([^<]*)</p>',
                                   text).group(1)), text


def status_of(client, uuid="ev-1", headers=AUTH):
    return client.get(f"/events/{uuid}", headers=headers).get_json()


# --- pure parts ----------------------------------------------------------------------------

def test_login_name_is_optional_short_and_printable():
    assert login_name(None) == "" and login_name("  alice ") == "alice"
    assert login_name("x" * 64) == "x" * 64
    for bad in ("x" * 65, "al\nice", "bob\x00", "tab\there"):
        with pytest.raises(ValueError, match="at most 64 printable"):
            login_name(bad)


def test_the_session_keeps_the_name_and_a_forged_note_is_ignored():
    sessions = Sessions("t0ken")
    session, cookie = sessions.issue("alice")
    assert sessions.read(cookie) == session and session.by == "alice (console)"
    assert sessions.read(sessions.issue()[1]).by == "console"
    sealed = sessions.seal({"ok": True, "text": "Approved"})
    assert sessions.unseal(sealed) == {"ok": True, "text": "Approved"}
    assert sessions.unseal(sealed[:-2] + "xx") is None
    assert Sessions("other").unseal(sealed) is None
    assert sessions.unseal(sealed, max_age=-1) is None


def test_approval_view_says_who_decided_through_which_door():
    record = {"rules": ["r"], "requested": 10.0, "deadline": 910.0, "on_timeout": "skip",
              "planned": [{"action": "delete-pod", "target": {"pod": "web"},
                           "table_rule": "r", "check": "pod is gone"}], "verdict": None}
    waiting = approval_view(record, "awaiting-approval")
    assert waiting["waiting"] and waiting["verdict"] is None
    assert waiting["planned"][0]["reason"] == "would be skipped now: pod is gone"
    record["verdict"] = {"decision": "approved", "by": "alice", "via": "console", "at": 20.0}
    decided = approval_view(record, "done")
    assert not decided["waiting"]
    assert decided["verdict"]["by"] == "alice (console)"
    record["verdict"]["by"] = "console"
    assert approval_view(record, "done")["verdict"]["by"] == "console"
    assert approval_view(None, "done") is None


def test_a_console_verdict_names_the_console_user_in_logs_audit_and_slack():
    alice = {"decision": "approved", "by": "alice", "via": "console", "at": 1.0}
    assert approver_text(alice) == "alice (console)"
    assert audit_note(alice) == "approved by alice (console)"
    assert who(alice) == "alice (console)"
    nameless = {**alice, "by": "console"}
    assert approver_text(nameless) == who(nameless) == "console"


def test_undo_summary_counts_outcomes():
    answer = {"by": "bob (console)", "outcome": "undone",
              "actions": [{"outcome": "undone"}, {"outcome": "not-undone"},
                          {"outcome": "undone"}]}
    assert undo_summary(answer) == "Undo by bob (console): undone (1 not-undone, 2 undone)."


# --- without a cluster ---------------------------------------------------------------------

@pytest.fixture
def dry_app(make_app, make_table):
    app = make_app(make_table(DRY), auth_token=TOKEN)
    return app, app.test_client()


def test_login_with_a_name_shows_it_and_a_bad_name_is_refused(dry_app):
    _, client = dry_app
    bad = log_in(client, "bob\x07")
    assert bad.status_code == 400 and "at most 64 printable" in bad.get_data(as_text=True)
    assert "Set-Cookie" not in bad.headers
    assert log_in(client, "alice").status_code == 302
    assert '>alice</span>' in page(client, "/ui/alerts")


def test_a_finished_alert_cannot_be_approved_and_the_page_says_why(dry_app):
    app, client = dry_app
    log_in(client, "alice")
    post_event(app, client)
    text, body = said(client, control(client, "ev-1", "approve", csrf_of(client)))
    assert text == "Not approved (409): event ev-1: not awaiting approval"
    assert 'class="error" id="said"' in body
    # A dry-run: nothing that can be undone, so no Undo and no form at all.
    assert 'id="control-forms"' not in body and "nothing it did can be undone" in body


def test_an_unknown_alert_is_a_readable_refusal_not_a_500(dry_app):
    _, client = dry_app
    log_in(client)
    text, _ = said(client, control(client, "nope", "undo", csrf_of(client)), 404)
    assert text.startswith("Not undone (404): no event nope")
    text, _ = said(client, control(client, "nope", "reject", csrf_of(client)), 404)
    assert text.startswith("Not rejected (404): no event nope")
    assert page(client, "/ui/alerts/nope/undo", 404)


def test_a_note_for_another_alert_or_forged_is_not_shown(dry_app):
    app, client = dry_app
    log_in(client)
    post_event(app, client)
    post_event(app, client, "ev-2")
    location = control(client, "ev-1", "approve", csrf_of(client))
    other = location.replace("/ui/alerts/ev-1?", "/ui/alerts/ev-2?")
    assert 'id="said"' not in page(client, other)
    assert 'id="said"' not in page(client, "/ui/alerts/ev-1?said=forged.note.here")


def test_controls_without_the_csrf_token_are_refused_and_do_nothing(dry_app):
    app, client = dry_app
    log_in(client)
    post_event(app, client)
    for verb in ("approve", "reject", "undo"):
        reply = client.post(f"/ui/alerts/ev-1/{verb}", data={})
        assert reply.status_code == 403 and "CSRF" in reply.get_json()["error"]
        reply = client.post(f"/ui/alerts/ev-1/{verb}", data={"csrf": "wrong"})
        assert reply.status_code == 403
    assert "undos" not in status_of(client)


def test_a_hostile_name_is_kept_as_text_in_the_undo_history(dry_app):
    app, client = dry_app
    log_in(client, HOSTILE)
    post_event(app, client)
    text, body = said(client, control(client, "ev-1", "undo", csrf_of(client)))
    assert text == f"Undo by {HOSTILE} (console): nothing-to-undo (1 not-undone)."
    assert status_of(client)["undos"][0]["by"] == f"{HOSTILE} (console)"
    assert "<script>alert" not in body
    assert "by <strong>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; (console)" in body
    history = body.split('id="undos"')[1]
    assert "not-undone" in history
    assert "nothing was done (would-run: no Kubernetes cluster configured)" in history


def test_a_read_only_console_shows_no_form_and_refuses_every_post(make_app, make_table):
    app = make_app(make_table(DRY))
    client = app.test_client()
    post_event(app, client, headers={})
    body = page(client, "/ui/alerts/ev-1")
    assert "<form" not in body
    for verb in ("approve", "reject", "undo"):
        reply = client.post(f"/ui/alerts/ev-1/{verb}", data={"csrf": "x"})
        assert reply.status_code == 403 and "read-only" in reply.get_json()["error"]
    assert 'id="confirm-undo"' not in page(client, "/ui/alerts/ev-1/undo")
    assert "undos" not in status_of(client, headers={})


# --- on the real kube-apiserver ------------------------------------------------------------

@pytest.fixture
def web(cluster):
    node = cluster.add_node("node-a").metadata.name
    cluster.add_node("node-b")
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    return node


@pytest.fixture
def live(apiserver, make_app, make_table):
    def make(text=APPROVAL, **settings):
        settings.setdefault("auth_token", TOKEN)
        app = make_app(make_table(text), api_client=apiserver.api_client(), **settings)
        return app, app.test_client()
    return make


@pytest.mark.slow
def test_approve_from_the_console_deletes_the_pod_and_names_the_console_user(cluster, web,
                                                                             live):
    app, client = live()
    log_in(client, "alice")
    post_event(app, client, namespace=cluster.namespace)
    body = page(client, "/ui/alerts/ev-1")
    assert 'id="approve"' in body and 'id="reject"' in body
    approval = body.split('id="approval"')[1].split("</dl>")[0]
    assert "awaiting approval" in approval and "delete-on-approval" in approval
    assert "skip" in approval
    assert "delete-pod" in body.split('id="planned"')[1]

    text, body = said(client, control(client, "ev-1", "approve", csrf_of(client)))
    assert text.startswith("Approved")
    app.extensions["worker"].run_pending()
    assert cluster.pod("web") is None  # deleted on the real API server
    done = status_of(client)
    assert done["state"] == "done"
    assert (done["approval"]["decision"], done["approval"]["by"],
            done["approval"]["via"]) == ("approved", "alice", "console")
    body = page(client, "/ui/alerts/ev-1")
    assert "approved by alice (console) at " in body.split('id="verdict"')[1]
    assert 'id="approve"' not in body
    app.extensions["responder"].audit.wait(10)  # audit Events go out from their own thread
    messages = [e.message for e in cluster.events() if e.action == "delete-pod"]
    assert messages and "approved by alice (console)" in messages[0]
    # Decided: a second click is refused, readably.
    text, _ = said(client, control(client, "ev-1", "reject", csrf_of(client)))
    assert text == "Not rejected (409): event ev-1: already approved by alice (console)"


@pytest.mark.slow
def test_reject_from_the_console_skips_the_action(cluster, web, live):
    app, client = live()
    log_in(client)  # no name: "console"
    post_event(app, client, namespace=cluster.namespace)
    text, _ = said(client, control(client, "ev-1", "reject", csrf_of(client)))
    assert text.startswith("Rejected")
    app.extensions["worker"].run_pending()
    decisions = [(d["action"], d["outcome"], d.get("reason"))
                 for d in status_of(client)["decisions"]]
    assert decisions == [("label-pod", "done", None),
                         ("delete-pod", "skipped", "rejected by console")]
    assert cluster.pod("web") is not None
    assert "rejected by console at " in page(client, "/ui/alerts/ev-1")


@pytest.mark.slow
def test_undo_from_the_console_puts_the_label_back_after_a_confirmation(cluster, web, live):
    app, client = live()
    log_in(client, "bob")
    post_event(app, client, namespace=cluster.namespace)
    said(client, control(client, "ev-1", "reject", csrf_of(client)))
    app.extensions["worker"].run_pending()
    assert cluster.pod("web").metadata.labels.get("suspect") == "true"

    body = page(client, "/ui/alerts/ev-1")
    assert 'href="/ui/alerts/ev-1/undo"' in body and 'id="approve"' not in body
    confirm = page(client, "/ui/alerts/ev-1/undo")
    listed = confirm.split('id="undo-actions"')[1].split("</ul>")[0]
    assert "label-pod" in listed and "delete-pod" not in listed  # skipped: nothing to undo
    assert 'id="confirm-undo"' in confirm

    text, body = said(client, control(client, "ev-1", "undo", csrf_of(client)))
    assert text == "Undo by bob (console): undone (1 not-undone, 1 undone)."
    assert "suspect" not in (cluster.pod("web").metadata.labels or {})
    history = body.split('id="undos"')[1]
    assert "bob (console)" in history and "label-pod" in history
    assert "nothing was done (skipped: rejected by bob (console))" in history
    # All put back: no Undo offered any more, the confirmation page says why.
    assert 'id="undo"' not in body
    assert 'id="nothing-to-undo"' in page(client, "/ui/alerts/ev-1/undo")
    assert status_of(client)["undos"][0]["by"] == "bob (console)"


@pytest.mark.slow
def test_controls_need_the_csrf_token_on_a_live_approval(cluster, web, live):
    app, client = live()
    log_in(client, "mallory")
    post_event(app, client, namespace=cluster.namespace)
    for verb in ("approve", "reject"):
        assert client.post(f"/ui/alerts/ev-1/{verb}").status_code == 403
    app.extensions["worker"].run_pending()
    assert status_of(client)["state"] == "awaiting-approval"
    assert cluster.pod("web") is not None


@pytest.mark.slow
def test_a_read_only_console_shows_the_approval_without_forms(cluster, web, live):
    app, client = live(auth_token=None)
    post_event(app, client, namespace=cluster.namespace, headers={})
    body = page(client, "/ui/alerts/ev-1")
    assert "awaiting approval" in body.split('id="approval"')[1]
    assert "<form" not in body and 'id="read-only-controls"' in body
    assert client.post("/ui/alerts/ev-1/approve", data={"csrf": "x"}).status_code == 403
    app.extensions["worker"].run_pending()
    assert status_of(client, headers={})["state"] == "awaiting-approval"
    assert cluster.pod("web") is not None


@pytest.mark.slow
def test_a_hostile_approver_name_is_escaped_on_the_alert_page(cluster, web, live):
    app, client = live()
    log_in(client, HOSTILE)
    post_event(app, client, namespace=cluster.namespace)
    said(client, control(client, "ev-1", "reject", csrf_of(client)))
    body = page(client, "/ui/alerts/ev-1")
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; (console)" in body
