"""The console's pure parts: chart geometry, session cookies, the login redirect, audit
Event lookups, filters."""

from __future__ import annotations

import pytest

from responder.alerts import HOUR
from responder.console.auditevents import involved_names
from responder.console.charts import HEIGHT, OUTCOME_WIDTH, alert_total, rule_charts
from responder.console.guard import safe_next
from responder.console.session import Sessions, csrf_matches
from responder.console.tablecheck import MAX_LAST, clamp_last
from responder.console.timeline import BadFilter, read_filters

NOW = 1_000 * HOUR + 1800  # half past an hour


def test_charts_rank_rules_by_alerts_and_scale_bars_to_the_busiest_hour():
    this_hour = int(NOW // HOUR)
    rows = [(this_hour, "quiet", "", 1), (this_hour, "busy", "", 4),
            (this_hour - 23, "busy", "", 2), (this_hour - 24, "busy", "", 99),  # too old
            (this_hour, "busy", "done", 3), (this_hour, "busy", "failed", 1)]
    charts, left_out = rule_charts(rows, NOW)
    assert [c.rule for c in charts] == ["busy", "quiet"] and left_out == 0
    busy = charts[0]
    assert busy.total == 6 and busy.hours[0] == 2 and busy.hours[-1] == 4
    assert busy.bars[-1].height == HEIGHT and busy.bars[0].height == HEIGHT / 2
    assert [(b.label, b.width) for b in busy.outcome_bars] == [
        ("done: 3", OUTCOME_WIDTH * 3 / 4), ("failed: 1", OUTCOME_WIDTH / 4)]


def test_charts_keep_the_busiest_rules_and_count_the_rest():
    rows = [(int(NOW // HOUR), f"rule-{i:02d}", "", i + 1) for i in range(25)]
    charts, left_out = rule_charts(rows, NOW, limit=20)
    assert len(charts) == 20 and left_out == 5 and charts[0].rule == "rule-24"
    assert alert_total(rows, NOW) == sum(range(1, 26))  # the quieter rules count too
    assert alert_total([(int(NOW // HOUR) - 24, "old", "", 9)], NOW) == 0


def test_a_session_cookie_carries_a_csrf_token_and_no_secret():
    sessions = Sessions("the-token")
    session, cookie = sessions.issue()
    assert "the-token" not in cookie and sessions.read(cookie) == session
    assert csrf_matches(session, session.csrf)
    assert not csrf_matches(session, "") and not csrf_matches(None, session.csrf)
    assert "the-token" not in repr(sessions)


def test_a_cookie_signed_for_another_token_or_expired_is_no_session():
    _, cookie = Sessions("old-token").issue()
    assert Sessions("new-token").read(cookie) is None
    assert Sessions("old-token", max_age=-1).read(cookie) is None
    assert Sessions("old-token").read(cookie + "x") is None


@pytest.mark.parametrize(("target", "expected"), [
    ("/ui/alerts?rule=x", "/ui/alerts?rule=x"), (None, "/ui/"), ("/healthz", "/ui/"),
    ("https://evil.example/ui/", "/ui/"), ("//evil.example/ui/", "/ui/"),
    ("/ui/\\evil", "/ui/"),
])
def test_login_only_returns_to_the_console(target, expected):
    assert safe_next(target) == expected


def test_audit_events_are_looked_for_on_the_pods_and_nodes_acted_on():
    decisions = [{"target": {"namespace": "shop", "pod": "web"}},
                 {"target": {"namespace": "shop", "pod": "web", "node": "node-a"}},
                 {"target": {"namespace": "shop"}}, {}]
    assert involved_names(decisions) == [("shop", "web"), ("default", "node-a")]


def test_filters_read_from_a_query_string():
    filters = read_filters({"rule": " Terminal shell in container ", "priority": "Critical",
                            "since": "2026-12-01T10:00", "until": "2026-12-01"})
    assert filters.rule == "Terminal shell in container" and filters.any
    assert filters.since == 1_796_119_200.0 and filters.until == 1_796_083_200.0
    assert not read_filters({}).any
    with pytest.raises(BadFilter, match="^priority: must be one of Emergency"):
        read_filters({"priority": "loud"})


@pytest.mark.parametrize(("raw", "expected"), [
    (None, 200), ("", 200), ("50", 50), ("0", 1), ("999999", MAX_LAST), ("many", 200)])
def test_how_many_alerts_a_check_replays_is_bounded(raw, expected):
    assert clamp_last(raw) == expected


def test_failed_logins_stop_counting_after_a_minute():
    import time

    from responder.console.guard import FAILED_LOGINS_PER_MINUTE, Guard
    from responder.settings import Settings

    guard = Guard(Settings.of(auth_token="t"))
    for _ in range(FAILED_LOGINS_PER_MINUTE):
        guard.login_failed()
    assert guard.login_blocked()
    assert not guard.login_blocked(now=time.monotonic() + 61)
    assert "t" not in repr(guard).replace("Guard(token=", "")
