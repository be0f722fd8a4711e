"""The console against a hostile visitor: query arguments that are not filters never reach
url_for (no 500, no link elsewhere), paging cursors out of range are 400s, and a table
whose YAML aliases expand without bound is refused before anything walks it."""

from __future__ import annotations

import re
import threading
import time
import types

import pytest

from responder.console import tablecheck
from responder.errors import TableError

from .test_console import TABLE, TOKEN, event, log_in, post, session_csrf


@pytest.fixture
def logged_in(make_app, make_table):
    app = make_app(make_table(TABLE), auth_token=TOKEN)
    client = app.test_client()
    post(app, client, *[event(f"e{i}") for i in range(55)], token=TOKEN)
    log_in(client)
    return app, client


@pytest.mark.parametrize("query", ["_method=POST", "_scheme=javascript",
                                   "_scheme=javascript&_external=1", "_anchor=x",
                                   "_external=1"])
@pytest.mark.parametrize("path", ["/ui/alerts", "/ui/alerts/rows"])
def test_url_for_options_in_the_query_are_ignored_not_a_500(logged_in, path, query):
    _, client = logged_in
    reply = client.get(f"{path}?namespace=shop&{query}")
    assert reply.status_code == 200
    links = re.findall(r'(?:href|data-src)="([^"]*)"', reply.get_data(as_text=True))
    assert links and all(link.startswith("/ui/") for link in links), links
    assert not any("_" in link.partition("?")[2].replace("&amp;", "&").split("=")[0]
                   for link in links)
    assert any("namespace=shop" in link for link in links)


@pytest.mark.parametrize("cursor", ["1:99999999999999999999", "1:-1", "inf:3", "nan:3"])
def test_a_cursor_out_of_range_is_a_400_naming_before(logged_in, cursor):
    _, client = logged_in
    for path in ("/ui/alerts", "/ui/alerts/rows"):
        reply = client.get(f"{path}?before={cursor}", headers={"Accept": "application/json"})
        assert reply.status_code == 400
        assert "before" in reply.get_json()["error"]


def test_the_older_link_keeps_the_filters_and_works(logged_in):
    _, client = logged_in
    html = client.get("/ui/alerts?namespace=shop&_method=POST").get_data(as_text=True)
    older = re.search(r'id="older" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert "namespace=shop" in older and "_method" not in older
    assert client.get(older).status_code == 200


LAUGHS = "".join(f"{x}: &{x} [{', '.join([f'*{p}' if p else '_' for _ in range(9)])}]\n"
                 for x, p in zip("abcdefghi", ["", *"abcdefgh"], strict=True))
ALIAS_BOMBS = {
    "priority": "rules:\n  - name: r\n    match: {rules: [x], priority: *i}\n"
                "    actions: [{action: label-pod, params: {labels: {a: b}}}]\n",
    "labels": "rules:\n  - name: r\n    match: {rules: [x]}\n"
              "    actions: [{action: label-pod, params: {labels: {a: *i}}}]\n",
    "rules": "rules: *i\n",
}


@pytest.mark.parametrize("where", sorted(ALIAS_BOMBS))
def test_a_table_whose_aliases_expand_without_bound_is_refused_quickly(logged_in, where):
    """Nine lines expanding to 9**9 nodes: quoted in a problem, the priority one alone
    made an answer of gigabytes."""
    _, client = logged_in
    reply = client.post("/ui/table/check", json={"text": LAUGHS + ALIAS_BOMBS[where]},
                        headers={"X-CSRF-Token": session_csrf(client)})
    assert reply.status_code == 200 and len(reply.data) < 10_000
    assert reply.get_json()["problems"] == [
        "table: its aliases expand to more than 1000000 nodes"]


def test_aliases_that_share_a_block_still_load(make_table):
    table = make_table("""
defaults: {dry_run: true}
rules:
  - name: one
    match: {rules: ["a"]}
    actions: &label [{action: label-pod, params: {labels: {quarantine: "true"}}}]
  - name: two
    match: {rules: ["b"]}
    actions: *label
""")
    assert [r.name for r in table.rules] == ["one", "two"]
    assert table.rules[0].actions == table.rules[1].actions


def test_a_list_inside_itself_is_a_problem_not_a_hang(make_table):
    with pytest.raises(TableError) as caught:
        make_table("rules: &r [*r]\n")
    assert "rule #1" in caught.value.problems[0]


def many_rules(n: int) -> str:
    """A valid table of `n` rules that all match the test events (continue: true)."""
    return "defaults: {dry_run: true}\nrules:\n" + "".join(f"""  - name: r{i}
    match: {{rules: ["*shell*"], output_fields: {{k8s.ns.name: [shop, x{i}]}}}}
    continue: true
    actions: [{{action: label-pod, params: {{labels: {{q{i}: "t"}}}}}}]
""" for i in range(n))


@pytest.fixture
def busy_journal(make_app, make_table):
    """300 alerts in the journal and a table of 300 rules that all match them: replaying
    it takes a few milliseconds an alert."""
    app = make_app(make_table(TABLE), auth_token=TOKEN)
    client = app.test_client()
    post(app, client, *[event(f"b{i:03d}") for i in range(300)], token=TOKEN)
    log_in(client)
    return app, client, many_rules(300)


@pytest.mark.slow
def test_a_check_stops_replaying_after_its_time_budget_newest_first(busy_journal, monkeypatch):
    # The check's clock moves 10 ms for each alert the edited (300-rule) table plans: its
    # budget runs out after 100 alerts on any machine, however fast it replays.
    now, plan = [0.0], tablecheck.plan_response

    def planning(table, *args, **kwargs):
        now[0] += 0.01 if len(table.rules) > 1 else 0.0
        return plan(table, *args, **kwargs)

    monkeypatch.setattr(tablecheck, "plan_response", planning)
    monkeypatch.setattr(tablecheck, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(tablecheck, "REPLAY_SECONDS", 1.0)
    _, client, text = busy_journal
    started = time.monotonic()
    reply = client.post("/ui/table/check", json={"text": text, "last": "300"},
                        headers={"X-CSRF-Token": session_csrf(client)})
    assert time.monotonic() - started < 3
    found = reply.get_json()
    assert reply.status_code == 200 and found["ok"]
    assert 95 <= found["changes"] <= 101
    assert f"{300 - found['changes']} oldest alert(s) not replayed" in found["html"]
    assert "b299" in found["html"] and "b000" not in found["html"]


@pytest.mark.slow
def test_a_second_check_while_one_runs_is_a_429_not_a_second_thread(busy_journal,
                                                                     monkeypatch):
    """Each check holds a request thread the intake shares: one at a time per process."""
    # The edited table's replay waits until the test has tried the others: the first check
    # is surely still running while they are made.
    tried, plan = threading.Event(), tablecheck.plan_response

    def planning(table, *args, **kwargs):
        if len(table.rules) > 1:
            tried.wait(10)
        return plan(table, *args, **kwargs)

    monkeypatch.setattr(tablecheck, "plan_response", planning)
    app, client, text = busy_journal
    other = app.test_client()
    log_in(other)
    first = {}
    running = threading.Thread(target=lambda: first.update(reply=client.post(
        "/ui/table/check", json={"text": text, "last": "300"},
        headers={"X-CSRF-Token": session_csrf(client)})))
    running.start()
    seen = []
    while running.is_alive() and 429 not in seen and len(seen) < 200:
        seen.append(other.post("/ui/table/check", json={"text": "rules: ["},
                               headers={"X-CSRF-Token": session_csrf(other)}).status_code)
        time.sleep(0.02)
    busy = other.post("/ui/table", data={"text": "rules: [", "csrf": session_csrf(other)})
    tried.set()
    running.join()
    assert first["reply"].status_code == 200 and 429 in seen
    assert busy.status_code == 429
    assert "another table check" in busy.get_json()["error"]
    again = other.post("/ui/table/check", json={"text": "rules: ["},
                       headers={"X-CSRF-Token": session_csrf(other)})
    assert again.status_code == 200 and not again.get_json()["ok"]


@pytest.mark.parametrize("text", ["[" * 100_000, "rules: [" + "{a: " * 3000,
                                  "rules:\n  - name: r\n    match: {rules: [x]}\n    actions:"
                                  " [{action: label-pod, params: {labels: " + "[" * 70 +
                                  "]" * 70 + "}}]\n"])
def test_a_table_nested_too_deep_is_a_problem_not_a_500(logged_in, text):
    _, client = logged_in
    reply = client.post("/ui/table/check", json={"text": text},
                        headers={"X-CSRF-Token": session_csrf(client)})
    assert reply.status_code == 200
    assert reply.get_json()["problems"] == ["table: nested deeper than 64 levels"]


def test_yaml_tags_that_build_python_objects_are_refused(make_table):
    with pytest.raises(TableError) as caught:
        make_table('rules: !!python/object/apply:os.system ["touch /tmp/owned"]\n')
    assert "could not determine a constructor" in caught.value.problems[0]


def test_megabyte_event_text_is_cut_in_every_list(make_app, make_table):
    """Forged events whose rule, namespace, pod and node are 100,000 characters each, all
    different: lists and charts show 200 of each, the suggestions leave them out, and the
    table check's diff cuts them too; the alert page itself still shows them whole."""
    app = make_app(make_table(TABLE + "  - name: all\n    match: {rules: ['*']}\n"
                              "    actions: [{action: delete-pod}]\n"),
                   auth_token=TOKEN)
    client = app.test_client()
    long = {str(i): str(i) * 100_000 for i in range(8)}
    post(app, client, *[event(f"long-{i}", rule=text, namespace=text, pod=text, node=text,
                              **{"k8s.node.name": text})
                        for i, text in long.items()], token=TOKEN)
    log_in(client)
    for path in ("/ui/", "/ui/alerts", "/ui/alerts/rows"):
        html = client.get(path).get_data(as_text=True)
        assert len(html) < 60_000, (path, len(html))
        assert "... (100000 characters)" in html
    assert '<datalist id="known-rules"></datalist>' in \
        client.get("/ui/alerts").get_data(as_text=True)
    check = client.post("/ui/table/check", json={"text": TABLE},
                        headers={"X-CSRF-Token": session_csrf(client)}).get_json()
    assert check["changes"] == 8 and len(check["html"]) < 60_000
    assert long["3"] in client.get("/ui/alerts/long-3").get_data(as_text=True)
