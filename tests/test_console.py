"""The console's views through Flask's test client: timeline, filters and paging, the alert
page, the table editor, the overview, escaping, and what a visitor may do with and without
a token."""

from __future__ import annotations

import json
import re
import time

import pytest

from responder.alerts import hourly_counts
from responder.console.session import COOKIE, Sessions
from responder.journal import Closing

TOKEN = "s3cret-console-token"
TABLE = """
defaults: {dry_run: true}
rules:
  - name: label-shells
    match: {rules: ["Terminal shell in container"]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true"}}
"""
# The change tried in the editor: shells are deleted too, and Netcat is now labelled.
CHANGED = TABLE + """      - action: delete-pod
  - name: label-netcat
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true"}}
"""


def event(uuid, rule="Terminal shell in container", namespace="shop", pod="web",
          priority="Notice", **fields):
    return {"uuid": uuid, "rule": rule, "priority": priority, "source": "syscall",
            "output": f"{rule} in {pod}", "hostname": "node-a",
            "output_fields": {"k8s.ns.name": namespace, "k8s.pod.name": pod, **fields}}


@pytest.fixture
def console(make_app, make_table):
    """An app without a token (read-only console) and a poster that runs the worker."""
    def build(table=TABLE, **settings):
        app = make_app(make_table(table), **settings)
        return app, app.test_client()
    return build


def post(app, client, *events, work=True, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for body in events:
        reply = client.post("/", data=json.dumps(body), content_type="application/json",
                            headers=headers)
        assert reply.status_code == 202, reply.get_json()
    if work:
        app.extensions["worker"].run_pending()


def page(client, path, status=200):
    reply = client.get(path)
    assert reply.status_code == status, reply.data[:500]
    return reply.get_data(as_text=True)


def rows(html):
    return re.findall(r'<tr(?: class="queued")? data-uuid="([^"]+)"', html)


def log_in(client, token=TOKEN):
    form = page(client, "/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    return client.post("/ui/login", data={"token": token, "csrf": csrf, "next": "/ui/table"})


def session_csrf(client):
    return re.search(r'data-csrf="([^"]*)"', page(client, "/ui/table")).group(1)


# --- timeline ---------------------------------------------------------------------------

def test_timeline_shows_a_finished_alert_with_its_rule_target_matches_and_outcomes(console):
    app, client = console()
    post(app, client, event("u-1"))
    html = page(client, "/ui/alerts")
    row = re.search(r'<tr data-uuid="u-1">(.*?)</tr>', html, re.S).group(1)
    assert "Terminal shell in container" in row and "Notice" in row
    assert "shop/web" in row and "node-a" in row and "label-shells" in row
    assert '<span class="badge o-would-run">label-pod: would-run</span>' in row
    assert "s-done" in row


def test_timeline_shows_an_event_not_yet_processed_from_the_journal(console):
    app, client = console()
    post(app, client, event("u-queued"), work=False)
    app.extensions["worker"].ingest()  # in the journal, not yet claimed
    html = page(client, "/ui/alerts")
    assert rows(html) == ["u-queued"]
    assert "not yet decided" in html and "s-pending" in html
    assert "Not decided yet" in page(client, "/ui/alerts/u-queued")


def test_timeline_is_newest_first_and_pages_without_repeating_a_row(console):
    app, client = console()
    post(app, client, *[event(f"u-{i:03d}") for i in range(120)])
    first = page(client, "/ui/alerts")
    assert rows(first)[:2] == ["u-119", "u-118"] and len(rows(first)) == 50
    seen = list(rows(first))
    older = re.search(r'id="older" href="([^"]+)"', first)
    while older:
        html = page(client, older.group(1).replace("&amp;", "&"))
        seen += rows(html)
        older = re.search(r'id="older" href="([^"]+)"', html)
    assert seen == [f"u-{i:03d}" for i in reversed(range(120))]


@pytest.mark.parametrize(("query", "expected"), [
    ("rule=Netcat+Remote+Code+Execution+in+Container", ["u-nc"]),
    ("namespace=other", ["u-other"]),
    ("priority=Critical", ["u-crit"]),
    ("outcome=none", ["u-nc"]),
    ("outcome=would-run", ["u-crit", "u-other", "u-1"]),
    ("state=done", ["u-nc", "u-crit", "u-other", "u-1"]),
    ("state=failed", []),
    ("rule=Terminal+shell+in+container&namespace=shop", ["u-crit", "u-1"]),
])
def test_timeline_filters(console, query, expected):
    app, client = console()
    post(app, client, event("u-1"), event("u-other", namespace="other"),
         event("u-crit", priority="Critical"),
         event("u-nc", rule="Netcat Remote Code Execution in Container"))
    assert rows(page(client, f"/ui/alerts?{query}")) == expected
    assert rows(page(client, f"/ui/alerts/rows?{query}")) == expected


def test_timeline_filters_by_time_range(console):
    app, client = console()
    post(app, client, event("u-1"))
    now = time.gmtime()
    before = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 3600))
    after = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 120))
    assert rows(page(client, f"/ui/alerts?since={before}&until={after}")) == ["u-1"]
    assert rows(page(client, f"/ui/alerts?since={after}")) == []
    assert rows(page(client, f"/ui/alerts?until={before}")) == []
    assert now


@pytest.mark.parametrize(("query", "named"), [
    ("priority=Loud", "priority"), ("outcome=exploded", "outcome"), ("state=gone", "state"),
    ("since=yesterday", "since"), ("before=xyz", "before"),
])
def test_a_bad_filter_is_a_400_naming_it(console, query, named):
    _, client = console()
    reply = client.get(f"/ui/alerts?{query}")
    assert reply.status_code == 400
    assert reply.get_json()["error"].startswith(f"{named}:")


def test_rows_partial_is_the_table_body_alone(console):
    app, client = console()
    post(app, client, event("u-1"))
    html = page(client, "/ui/alerts/rows")
    assert rows(html) == ["u-1"] and "<html" not in html and "<form" not in html


# --- the alert page ---------------------------------------------------------------------

def test_alert_page_shows_output_fields_decisions_reasons_and_attempts(console):
    app, client = console()
    post(app, client, event("u-1", **{"proc.cmdline": "bash -i"}))
    html = page(client, "/ui/alerts/u-1")
    assert "Terminal shell in container in web" in html  # the output
    assert "<th>proc.cmdline</th><td>bash -i</td>" in html
    assert "<strong>label-pod</strong> from table rule <em>label-shells</em>" in html
    assert "no Kubernetes cluster configured" in html  # the would-run's reason
    assert "after 1 attempt(s)" in html
    assert 'id="controls"' in html


def test_alert_page_renders_each_decisions_details(console):
    app, client = console()
    post(app, client, event("u-1"), work=False)
    worker, store = app.extensions["worker"], app.extensions["store"]
    worker.ingest()
    [claimed] = store.claim(1, 60)
    details = {"evidence_sha256": "ab" * 32, "files": ["/tmp/x", "<b>y</b>"]}
    store.finish(claimed.id, "done", outcomes={0: {
        "action": "label-pod", "target": {"namespace": "shop", "pod": "web"},
        "outcome": "done", "details": details, "slot": "label-shells:label-pod#1"}})
    html = page(client, "/ui/alerts/u-1")
    assert "<dt>evidence_sha256</dt><dd>" + "ab" * 32 + "</dd>" in html
    assert "&lt;b&gt;y&lt;/b&gt;" in html and "<b>y</b>" not in html


def test_an_unknown_alert_is_a_404_page(console):
    _, client = console()
    assert "No alert no-such-uuid" in page(client, "/ui/alerts/no-such-uuid", 404)


def test_audit_events_without_a_cluster_say_so(console):
    app, client = console()
    post(app, client, event("u-1"))
    assert "no Kubernetes cluster configured" in page(client, "/ui/alerts/u-1/audit")


def test_everything_taken_from_an_alert_is_escaped(console):
    app, client = console()
    script = "<script>alert('x')</script>"
    post(app, client, event("u-x", rule=f"Rule {script}", namespace="ns", pod=script,
                            **{"proc.name": script}))
    for path in ("/ui/alerts", "/ui/alerts/rows", "/ui/alerts/u-x", "/ui/"):
        html = page(client, path)
        assert "<script>alert" not in html, path
        assert "&lt;script&gt;alert(" in html, path


# --- the table page ---------------------------------------------------------------------

def test_table_page_shows_the_loaded_table_its_digest_and_time(console):
    app, client = console()
    html = page(client, "/ui/table")
    table = app.extensions["responder"].table
    import hashlib
    assert hashlib.sha256(TABLE.encode()).hexdigest() in html
    assert "test-table.yaml" in html and "label-shells" in html  # the text, in the editor
    assert time.strftime("%Y-%m-%d", time.gmtime()) in html
    assert table.text == TABLE


def test_table_page_shows_the_reload_errors_of_a_refused_file(console, tmp_path):
    path = tmp_path / "actions.yaml"
    path.write_text(TABLE)
    app, client = console(table=TABLE, actions_file=str(path), reload_seconds=0)
    path.write_text(TABLE.replace("label-pod", "label-podz"))
    assert app.extensions["reloader"].check() is False
    html = page(client, "/ui/table")
    assert 'id="reload-errors"' in html
    assert "rule #1 (label-shells): actions[1].action: unknown action &#39;label-podz&#39;" in html


def test_read_only_console_refuses_every_post_and_says_why(console):
    _, client = console()
    html = page(client, "/ui/table")
    assert 'id="no-auth"' in html and "NO AUTHENTICATION" in html and "readonly" in html
    reply = client.post("/ui/table/check", json={"text": TABLE})
    assert reply.status_code == 403
    assert "read-only" in reply.get_json()["error"]


def test_editor_check_names_every_problem_by_rule_and_key(console):
    _, client = console(auth_token=TOKEN)
    log_in(client)
    broken = TABLE.replace("label-pod", "label-podz").replace("dry_run: true", "dry_run: 3")
    reply = client.post("/ui/table/check", json={"text": broken},
                        headers={"X-CSRF-Token": session_csrf(client)})
    assert reply.status_code == 200
    found = reply.get_json()
    assert not found["ok"]
    assert any("rule #1 (label-shells): actions[1].action" in p for p in found["problems"])
    assert any("defaults: dry_run" in p for p in found["problems"])
    assert "label-podz" in found["html"]


def test_editor_check_lists_only_the_alerts_whose_decisions_change(console):
    app, client = console(auth_token=TOKEN)
    post(app, client, event("u-shell"), event("u-other", rule="Some other rule"),
         event("u-nc", rule="Netcat Remote Code Execution in Container"), token=TOKEN)
    log_in(client)
    reply = client.post("/ui/table/check", json={"text": CHANGED, "last": 50},
                        headers={"X-CSRF-Token": session_csrf(client)})
    found = reply.get_json()
    assert found["ok"] and found["changes"] == 2
    html = found["html"]
    assert "u-shell" in html and "u-nc" in html and "u-other" not in html
    assert "+ delete-pod: would-run" in html and "+ label-pod: would-run" in html
    assert "Replayed 3 alert(s)" in html
    assert app.extensions["responder"].table.text == TABLE  # never applied


def test_editor_check_shows_a_change_of_params_alone(console):
    app, client = console(auth_token=TOKEN)
    post(app, client, event("u-shell"), token=TOKEN)
    log_in(client)
    relabel = TABLE.replace('quarantine: "true"', 'quarantine: "held"')
    found = client.post("/ui/table/check", json={"text": relabel, "last": 10},
                        headers={"X-CSRF-Token": session_csrf(client)}).get_json()
    assert found["ok"] and found["changes"] == 1
    # tojson: JSON with <, >, & and ' escaped for HTML.
    assert ('params {"labels": {"quarantine": "true"}} → '
            '{"labels": {"quarantine": "held"}}') in found["html"]


def test_editor_form_post_renders_the_check_on_the_page(console):
    app, client = console(auth_token=TOKEN)
    post(app, client, event("u-shell"), token=TOKEN)
    log_in(client)
    csrf = session_csrf(client)
    html = client.post("/ui/table", data={"text": CHANGED, "last": "10", "csrf": csrf}
                       ).get_data(as_text=True)
    assert 'id="diff"' in html and "+ delete-pod: would-run" in html
    assert "- action: delete-pod" in html  # the changed text stays in the editor, to copy


def test_editor_check_wants_a_json_object_with_text(console):
    _, client = console(auth_token=TOKEN)
    log_in(client)
    reply = client.post("/ui/table/check", data="nope", content_type="application/json",
                        headers={"X-CSRF-Token": session_csrf(client)})
    assert reply.status_code == 400 and "'text'" in reply.get_json()["error"]


# --- the overview -----------------------------------------------------------------------

def test_overview_charts_alerts_and_outcomes_per_rule(console):
    app, client = console()
    post(app, client, event("u-1"), event("u-2"),
         event("u-nc", rule="Netcat Remote Code Execution in Container"))
    html = page(client, "/ui/")
    assert 'id="total">3<' in html
    assert html.index("Terminal shell in container") < html.index("Netcat Remote")
    assert "<title>would-run: 2</title>" in html
    assert "no action planned" in html
    assert "DRY-RUN: no Kubernetes cluster configured" in html and "NO AUTHENTICATION" in html


def test_hourly_counts_count_an_event_finished_twice_once(console):
    app, client = console()
    post(app, client, event("u-1"))
    store = app.extensions["store"]
    conn = store.connection()
    event_id, received = conn.execute("SELECT id, received FROM events").fetchone()
    summary = conn.execute("SELECT rule FROM alerts").fetchone()
    from responder.alerts import AlertSummary
    again = AlertSummary("u-1", received, summary[0], "Notice", "shop", "web", "node-a", (),
                         (("label-pod", "would-run"),))
    store.finish_many([Closing(event_id, "done", None, {}, summary=again)])
    counts = {(rule, outcome): n for _, rule, outcome, n in hourly_counts(conn, time.time())}
    assert counts == {("Terminal shell in container", ""): 1,
                      ("Terminal shell in container", "would-run"): 1}


def test_pruned_events_take_their_summaries_with_them(console):
    app, client = console()
    store = app.extensions["store"]
    store.clock = lambda: time.time() - 3 * 86400  # received and finished 3 days ago
    post(app, client, event("u-old"))
    store.clock = time.time
    post(app, client, event("u-new"))
    store.prune(86400)
    conn = store.connection()
    assert conn.execute("SELECT key FROM alerts").fetchall() == [("u-new",)]
    assert conn.execute("SELECT COUNT(*) FROM alert_outcomes").fetchone()[0] == 1
    assert rows(page(client, "/ui/alerts")) == ["u-new"]
    counted = [n for _, _, outcome, n in hourly_counts(conn, time.time(), hours=24 * 5)
               if outcome == ""]
    assert counted == [1]  # the hourly counts of 3 days ago are gone too


def test_the_intake_writes_no_summary(console):
    app, client = console()
    post(app, client, event("u-1"), work=False)
    app.extensions["worker"].ingest()
    conn = app.extensions["store"].connection()
    assert conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 0


# --- logging in, sessions, CSRF ---------------------------------------------------------

def test_with_a_token_every_page_asks_to_log_in_first(console):
    _, client = console(auth_token=TOKEN)
    for path in ("/ui/", "/ui/alerts", "/ui/alerts/u-1", "/ui/table"):
        reply = client.get(path)
        assert reply.status_code == 302, path
        assert reply.headers["Location"].startswith("/ui/login?next=")
    reply = client.get("/ui/alerts/rows", headers={"X-Requested-With": "fetch"})
    assert reply.status_code == 401 and "log in" in reply.get_json()["error"]


def test_login_sets_a_signed_httponly_strict_cookie_without_the_token(console):
    _, client = console(auth_token=TOKEN)
    reply = log_in(client)
    assert reply.status_code == 302 and reply.headers["Location"] == "/ui/table"
    cookie = reply.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the TLS test
    assert TOKEN not in cookie
    html = page(client, "/ui/table")
    assert TOKEN not in html and 'id="no-auth"' not in html


def test_the_cookie_is_secure_under_tls(console):
    _, client = console(auth_token=TOKEN)
    client = client.application.test_client()
    form = client.get("/ui/login", base_url="https://localhost").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    reply = client.post("/ui/login", data={"token": TOKEN, "csrf": csrf},
                        base_url="https://localhost")
    assert "Secure" in reply.headers["Set-Cookie"]


def test_a_wrong_token_is_refused_without_echoing_it(console):
    _, client = console(auth_token=TOKEN)
    reply = log_in(client, token="guess-<b>")
    assert reply.status_code == 401 and "Set-Cookie" not in reply.headers
    body = reply.get_data(as_text=True)
    assert "not the responder&#39;s token" in body and "guess" not in body


def test_login_without_its_csrf_token_is_refused(console):
    _, client = console(auth_token=TOKEN)
    reply = client.post("/ui/login", data={"token": TOKEN})
    assert reply.status_code == 403 and "CSRF" in reply.get_json()["error"]
    reply = client.post("/ui/login", data={"token": TOKEN, "csrf": "forged"})
    assert reply.status_code == 403


def test_a_post_without_the_sessions_csrf_token_is_refused(console):
    _, client = console(auth_token=TOKEN)
    log_in(client)
    assert client.post("/ui/table/check", json={"text": TABLE}).status_code == 403
    reply = client.post("/ui/table/check", json={"text": TABLE},
                        headers={"X-CSRF-Token": "another-sessions-token"})
    assert reply.status_code == 403 and "CSRF" in reply.get_json()["error"]
    assert client.post("/ui/table", data={"text": TABLE}).status_code == 403


def test_a_session_issued_for_another_token_or_forged_is_refused(console):
    _, client = console(auth_token=TOKEN)
    _, other = Sessions("another-token").issue()
    for value in (other, "forged.value.sig"):
        client.set_cookie(COOKIE, value, path="/ui/")
        assert client.get("/ui/table").status_code == 302


def test_a_session_is_accepted_by_every_process_with_the_same_token(console):
    _, first = console(auth_token=TOKEN)
    _, second = console(auth_token=TOKEN)
    cookie = log_in(first).headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    second.set_cookie(COOKIE, cookie, path="/ui/")
    assert second.get("/ui/table").status_code == 200


def test_logout_needs_csrf_and_ends_the_session(console):
    _, client = console(auth_token=TOKEN)
    log_in(client)
    assert client.post("/ui/logout").status_code == 403
    reply = client.post("/ui/logout", data={"csrf": session_csrf(client)})
    assert reply.status_code == 302 and f"{COOKIE}=;" in reply.headers["Set-Cookie"]


def test_login_never_redirects_off_the_console(console):
    app, _ = console(auth_token=TOKEN)
    for target in ("https://evil.example/", "//evil.example/ui/", "/healthz", "/\\evil"):
        client = app.test_client()
        form = page(client, "/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
        reply = client.post("/ui/login", data={"token": TOKEN, "csrf": csrf, "next": target})
        assert reply.headers["Location"] == "/ui/", target


def test_the_event_endpoints_still_need_the_bearer_token(console):
    app, client = console(auth_token=TOKEN)
    log_in(client)  # a console session is not a bearer token
    reply = client.post("/", data=json.dumps(event("u-1")), content_type="application/json")
    assert reply.status_code == 401
    assert client.get("/events/u-1").status_code == 401


def test_console_answers_carry_a_strict_content_security_policy(console):
    _, client = console()
    reply = client.get("/ui/alerts")
    assert "script-src 'self'" in reply.headers["Content-Security-Policy"]
    assert reply.headers["X-Frame-Options"] == "DENY"
    assert reply.headers["Cache-Control"] == "no-store"
    html = reply.get_data(as_text=True)
    assert "<script>" not in html and "onclick" not in html and "http://" not in html
    script = client.get("/ui/static/console.js")
    assert script.status_code == 200
    script.close()


def test_editor_check_logs_no_decision(console, capsys):
    # A tried table's would-be decisions are not the responder's: the audit log (decision
    # records) must not show them.
    app, client = console(auth_token=TOKEN)
    post(app, client, event("u-shell"), token=TOKEN)
    log_in(client)
    capsys.readouterr()
    reply = client.post("/ui/table/check", json={"text": CHANGED},
                        headers={"X-CSRF-Token": session_csrf(client)})
    assert reply.get_json()["changes"] == 1
    logged = capsys.readouterr()
    assert " decision " not in logged.out + logged.err


def test_a_script_with_the_bearer_token_needs_no_session(console):
    app, client = console(auth_token=TOKEN)
    post(app, client, event("u-shell"), token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/ui/alerts", headers=headers).status_code == 200
    reply = client.post("/ui/table/check", json={"text": CHANGED}, headers=headers)
    assert reply.status_code == 200 and reply.get_json()["changes"] == 1
    wrong = {"Authorization": "Bearer not-it"}
    assert client.post("/ui/table/check", json={"text": CHANGED},
                       headers=wrong).status_code == 401


def test_the_queue_block_lists_new_retrying_and_running_events_newest_first(console):
    app, client = console()
    post(app, client, *[event(f"u-{i}") for i in range(4)], work=False)
    worker, store = app.extensions["worker"], app.extensions["store"]
    worker.ingest()
    first, second = store.claim(2, 60)
    store.retry_later(first.id, 30, "HTTP 503: try later")
    html = page(client, "/ui/alerts")
    assert rows(html) == ["u-3", "u-2", "u-1", "u-0"]
    assert "s-running" in html and 'title="HTTP 503: try later">retrying' in html


def test_inline_intake_says_it_keeps_no_journal(console):
    _, client = console(intake="inline")
    assert 'id="inline"' in page(client, "/ui/alerts")


def test_the_rule_filter_suggests_the_rules_seen(console):
    app, client = console()
    post(app, client, event("u-1"))
    assert '<option value="Terminal shell in container">' in page(client, "/ui/alerts")


def test_an_event_awaiting_approval_shows_in_the_queue_block(console):
    from responder.alerts import AWAITING as SHOWN
    from responder.journal import AWAITING

    assert SHOWN == AWAITING
    app, client = console()
    post(app, client, event("u-wait"), work=False)
    worker, store = app.extensions["worker"], app.extensions["store"]
    worker.ingest()
    [claimed] = store.claim(1, 60)
    store.finish_many([Closing(claimed.id, AWAITING, None, {},
                               approval={"deadline": time.time() + 900})])
    html = page(client, "/ui/alerts")
    assert rows(html) == ["u-wait"] and "awaiting approval" in html
    assert rows(page(client, f"/ui/alerts?state={AWAITING}")) == ["u-wait"]
    assert "Awaiting approval" in page(client, "/ui/alerts/u-wait")


def test_guessing_the_token_is_throttled(console):
    from responder.console.guard import FAILED_LOGINS_PER_MINUTE

    _, client = console(auth_token=TOKEN)
    for _ in range(FAILED_LOGINS_PER_MINUTE):
        assert log_in(client, token="guess").status_code == 401
    reply = log_in(client)  # even the right one, for now
    assert reply.status_code == 429 and "too many" in reply.get_json()["error"]
