"""Slack notifications: the message, when to send it, settings, and sending over real HTTP."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter

import pytest
from slack_sdk.http_retry import (
    ConnectionErrorRetryHandler,
    FixedValueRetryIntervalCalculator,
    RateLimitErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler

from responder.actions import Outcome, Result, Target
from responder.decisions import Decision
from responder.errors import ConfigError
from responder.events import Priority, event_from_dict
from responder.executor import ActionReport
from responder.notify import (
    COLOURS,
    CUT_MARK,
    SECTION_LIMIT,
    SlackConfig,
    SlackNotifier,
    build_alert_message,
    build_slack_message,
    cut_escaped,
    notify_choices,
    outcome_text,
    should_notify,
    slack_status,
)

from .netcat import netcat_event
from .slackserver import SlackServer

TOKEN = "xoxb-1111-2222-secret-token"
POD = Target("prod", "web-1", "node-1", "abc123")


def shell_event(**changes):
    data = {
        "uuid": "3f1e9c9e-0000-4000-8000-000000000001",
        "rule": "Terminal shell in container",
        "priority": "Critical",
        "source": "syscall",
        "time": "2024-05-01T10:00:00.123456789Z",
        "hostname": "node-1",
        "output": "10:00:00.123456789: Critical A shell was spawned (user=root shell=bash)",
        "output_fields": {"k8s.ns.name": "prod", "k8s.pod.name": "web-1",
                          "container.id": "abc123", "proc.cmdline": "bash -i",
                          "container.image.repository": "nginx",
                          "container.image.tag": "1.25"},
    }
    fields = changes.pop("output_fields", {})
    data.update(changes)
    data["output_fields"] = {**data["output_fields"], **fields}
    return event_from_dict(data)


def report(action="delete-pod", outcome=Outcome.DONE, reason=None, table_rule="kill-shells",
           dry_run=False, target=POD, needs=("namespace", "pod")):
    decision = Decision(table_rule, action, {}, target, needs, dry_run)
    return ActionReport(decision, target, Result(outcome, reason))


def mrkdwn(text):
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def strings(value):
    """Every string inside a payload, to check escaping everywhere at once."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def fast_retries():
    """The default handlers' kinds, without their waits, for tests about something else."""
    quick = FixedValueRetryIntervalCalculator(0.01)
    return [RateLimitErrorRetryHandler(1, quick), ConnectionErrorRetryHandler(1, quick),
            ServerErrorRetryHandler(1, quick)]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def slack():
    with SlackServer() as server:
        yield server


@pytest.fixture
def results():
    return []


@pytest.fixture
def make_notifier(slack, results):
    notifiers = []

    def make(clock=time.monotonic, webhook=True, retry_handlers=None, **config):
        config.setdefault("timeout", 2.0)
        if webhook:
            cfg = SlackConfig(webhook_url=slack.webhook_url, **config)
        else:
            cfg = SlackConfig(token=TOKEN, channel="#security", api_url=slack.api_url, **config)
        notifier = SlackNotifier(cfg, on_result=results.append, clock=clock,
                                 retry_handlers=retry_handlers)
        notifiers.append(notifier)
        return notifier

    yield make
    for notifier in notifiers:
        notifier.close(5)


# --- the message -----------------------------------------------------------------------

def test_message_for_a_representative_event_matches_the_expected_payload():
    reports = [
        report("label-pod", Outcome.DONE, table_rule="isolate"),
        report("delete-pod", Outcome.DONE),
        report("cordon-node", Outcome.FAILED, 'HTTP 403: nodes "node-1" is forbidden',
               needs=("node",)),
    ]
    message = build_slack_message(shell_event(), reports, ("isolate", "kill-shells"))
    headline = ("[Critical] Terminal shell in container on pod prod/web-1: label-pod done, "
                "delete-pod done, cordon-node FAILED")
    assert message == {
        "text": headline,
        "attachments": [{
            "color": "#d40000",
            "fallback": headline,
            "blocks": [
                {"type": "section", "fields": [
                    mrkdwn("*Falco rule*\nTerminal shell in container"),
                    mrkdwn("*Priority*\nCritical"),
                    mrkdwn("*Namespace*\nprod"),
                    mrkdwn("*Pod*\nweb-1"),
                    mrkdwn("*Node*\nnode-1"),
                    mrkdwn("*Image*\nnginx:1.25"),
                    mrkdwn("*Table rule*\nisolate, kill-shells"),
                ]},
                {"type": "section", "text": mrkdwn("*Command line*\n```bash -i```")},
                {"type": "section", "text": mrkdwn(
                    "*Falco output*\n```10:00:00.123456789: Critical A shell was spawned "
                    "(user=root shell=bash)```")},
                {"type": "section", "text": mrkdwn(
                    "*Response*\n"
                    "• `label-pod` (isolate): done\n"
                    "• `delete-pod` (kill-shells): done\n"
                    "• `cordon-node` (kill-shells): FAILED: HTTP 403: nodes \"node-1\" is "
                    "forbidden")},
                {"type": "context", "elements": [mrkdwn(
                    "event time 2024-05-01T10:00:00.123456789Z · uuid "
                    "3f1e9c9e-0000-4000-8000-000000000001 · source syscall · host node-1")]},
            ],
        }],
    }


@pytest.mark.parametrize(("result", "expected"), [
    (Result(Outcome.DONE), "done"),
    (Result(Outcome.ALREADY_DONE, "already gone"), "already gone"),
    (Result(Outcome.ALREADY_DONE, "already cordoned"), "already cordoned"),
    (Result(Outcome.WOULD_RUN, "dry-run"), "dry-run"),
    (Result(Outcome.WOULD_RUN, "no Kubernetes cluster configured"),
     "dry-run (no Kubernetes cluster configured)"),
    (Result(Outcome.SKIPPED, "namespace kube-system is protected"),
     "skipped: namespace kube-system is protected"),
    (Result(Outcome.FAILED, "HTTP 500: etcd <timeout>"), "FAILED: HTTP 500: etcd &lt;timeout&gt;"),
])
def test_outcome_wording(result, expected):
    assert outcome_text(result) == expected


def test_message_without_cmdline_or_pod_names_the_node_and_omits_missing_parts():
    event = shell_event(output="", output_fields={"k8s.pod.name": None, "k8s.ns.name": None,
                                                  "container.id": "host",
                                                  "proc.cmdline": None})
    message = build_slack_message(event, [], ())
    assert message["text"] == "[Critical] Terminal shell in container on node node-1: no action"
    blocks = message["attachments"][0]["blocks"]
    assert [b["text"]["text"].split("\n")[0] for b in blocks if "text" in b] == ["*Response*"]
    labels = [f["text"].split("\n")[0] for f in blocks[0]["fields"]]
    assert labels == ["*Falco rule*", "*Priority*", "*Node*", "*Image*", "*Table rule*"]


def test_event_fields_cannot_inject_mentions_or_links():
    event = shell_event(
        rule="Shell <!channel> & friends",
        output="evil <http://x|y> && <@U123>",
        output_fields={"k8s.pod.name": "<http://x|y>", "proc.cmdline": "sh -c 'a && b <!here>'",
                       "container.image.repository": "img<!everyone>"})
    reports = [report(outcome=Outcome.FAILED, reason="HTTP 400: <!subteam^S1> & more")]
    message = build_slack_message(event, reports, ("kill-shells",))
    for text in strings(message):
        assert "<" not in text and ">" not in text, text
        assert re.search(r"&(?!amp;|lt;|gt;)", text) is None, text
    assert message["text"].startswith("[Critical] Shell &lt;!channel&gt; &amp; friends on pod "
                                      "prod/&lt;http://x|y&gt;")
    fields = message["attachments"][0]["blocks"][0]["fields"]
    assert mrkdwn("*Pod*\n&lt;http://x|y&gt;") in fields
    assert "sh -c 'a &amp;&amp; b &lt;!here&gt;'" in str(message)


def test_long_output_and_cmdline_are_cut_inside_slack_limits_without_breaking_escapes():
    event = shell_event(output="<&>" * 5000, output_fields={"proc.cmdline": "x&" * 4000})
    message = build_slack_message(event, [report()] * 200, ("kill-shells",))
    blocks = message["attachments"][0]["blocks"]
    sections = [b["text"]["text"] for b in blocks if b["type"] == "section" and "text" in b]
    assert all(len(text) <= SECTION_LIMIT for text in sections)
    cmdline, output, actions = sections
    assert cmdline.endswith(CUT_MARK + "```") and output.endswith(CUT_MARK + "```")
    for text in sections:
        assert re.search(r"&(?!amp;|lt;|gt;)", text) is None
    assert actions.endswith("more")


@pytest.mark.parametrize("limit", range(len(CUT_MARK), len(CUT_MARK) + 12))
def test_cut_never_splits_an_escape_sequence(limit):
    cut = cut_escaped("&<>" * 10, limit)
    assert len(cut) <= limit and cut.endswith(CUT_MARK)
    assert re.fullmatch(r"(&amp;|&lt;|&gt;)*" + re.escape(CUT_MARK), cut)


def test_triple_backticks_in_a_cmdline_cannot_close_the_code_block():
    event = shell_event(output="", output_fields={"proc.cmdline": "echo ```*bold*```"})
    section = build_slack_message(event, [], ())["attachments"][0]["blocks"][1]
    body = section["text"]["text"].removeprefix("*Command line*\n```").removesuffix("```")
    assert "```" not in body


def test_colour_follows_severity():
    assert set(COLOURS) == set(Priority)
    critical = build_slack_message(shell_event(priority="Critical"), [], ())
    notice = build_slack_message(shell_event(priority="Notice"), [], ())
    assert critical["attachments"][0]["color"] == COLOURS[Priority.CRITICAL]
    assert notice["attachments"][0]["color"] == COLOURS[Priority.NOTICE]
    assert COLOURS[Priority.CRITICAL] != COLOURS[Priority.NOTICE]


def test_summary_message_says_how_many_events_it_stands_for():
    message = build_slack_message(shell_event(), [report()], ("kill-shells",), count=499)
    assert message["text"].startswith("[Critical] 499× Terminal shell in container")
    context = message["attachments"][0]["blocks"][-1]["elements"][0]["text"]
    assert "499 events like this (same Falco rule, namespace and pod)" in context


def test_alert_message_is_escaped_text():
    message = build_alert_message("delete limit reached for <prod> & co")
    assert message["text"] == (
        ":warning: falco-responder: delete limit reached for &lt;prod&gt; &amp; co")


# --- when to notify --------------------------------------------------------------------

@pytest.mark.parametrize(("outcome", "dry_run", "expected"), [
    (Outcome.DONE, False, True),
    (Outcome.ALREADY_DONE, False, True),
    (Outcome.FAILED, False, True),
    (Outcome.WOULD_RUN, True, False),
    (Outcome.SKIPPED, False, False),
])
def test_default_notify_speaks_when_an_action_ran_or_failed(outcome, dry_run, expected):
    reports = [report(outcome=outcome, dry_run=dry_run)]
    assert should_notify({"kill-shells": None}, reports, shell_event(),
                         Priority.DEBUG) is expected


def test_notify_slack_always_speaks_and_empty_notify_never_does():
    dry = [report(outcome=Outcome.WOULD_RUN, reason="dry-run", dry_run=True)]
    done = [report()]
    assert should_notify({"kill-shells": ("slack",)}, dry, shell_event(), Priority.DEBUG)
    assert not should_notify({"kill-shells": ()}, done, shell_event(), Priority.DEBUG)


def test_one_matched_rule_wanting_slack_is_enough():
    reports = [report(table_rule="quiet"), report(table_rule="loud", outcome=Outcome.WOULD_RUN)]
    assert should_notify({"quiet": (), "loud": ("slack",)}, reports, shell_event(),
                         Priority.DEBUG)
    # The default looks only at its own rule's actions.
    assert not should_notify({"quiet": (), "other": None}, reports, shell_event(),
                             Priority.DEBUG)


def test_events_below_min_priority_never_notify():
    reports = [report()]
    assert not should_notify({"kill-shells": ("slack",)}, reports,
                             shell_event(priority="Notice"), Priority.WARNING)
    assert should_notify({"kill-shells": ("slack",)}, reports,
                         shell_event(priority="Warning"), Priority.WARNING)


def test_notify_choices_reads_the_matched_rules_from_the_table(make_table):
    table = make_table("""
rules:
  - name: kill-shells
    match: {rules: [a]}
    actions: [{action: delete-pod}]
  - name: silent
    match: {rules: [a]}
    notify: []
    actions: [{action: delete-pod}]
  - name: loud
    match: {rules: [b]}
    notify: [slack]
    actions: [{action: delete-pod}]
""")
    assert notify_choices(table, ("kill-shells", "silent")) == {"kill-shells": None,
                                                                "silent": ()}


# --- settings --------------------------------------------------------------------------

def test_slack_is_off_without_webhook_or_token():
    assert SlackConfig.from_env({}) is None
    assert SlackConfig.from_env({"RESPONDER_SLACK_MIN_PRIORITY": "Error"}) is None
    assert "off" in slack_status(None)


def test_webhook_config_from_env_with_defaults():
    config = SlackConfig.from_env({"RESPONDER_SLACK_WEBHOOK_URL": "https://hooks.example/T/B/x"})
    assert config.mode == "webhook"
    assert (config.min_priority, config.window_seconds, config.timeout) == (
        Priority.DEBUG, 60.0, 10.0)
    assert "incoming webhook" in slack_status(config)


def test_token_config_from_env():
    config = SlackConfig.from_env({
        "RESPONDER_SLACK_TOKEN": TOKEN, "RESPONDER_SLACK_CHANNEL": "#security",
        "RESPONDER_SLACK_MIN_PRIORITY": "warning", "RESPONDER_SLACK_API_URL": "http://proxy/api/",
        "RESPONDER_SLACK_WINDOW_SECONDS": "30", "RESPONDER_SLACK_TIMEOUT": "2.5"})
    assert config.mode == "web-api"
    assert (config.token, config.channel, config.min_priority, config.api_url,
            config.window_seconds, config.timeout) == (
        TOKEN, "#security", Priority.WARNING, "http://proxy/api/", 30.0, 2.5)


def test_secrets_come_from_mounted_files(tmp_path):
    (tmp_path / "url").write_text("https://hooks.example/T/B/from-file\n")
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    webhook = SlackConfig.from_env({"RESPONDER_SLACK_WEBHOOK_URL_FILE": str(tmp_path / "url")})
    assert webhook.webhook_url == "https://hooks.example/T/B/from-file"
    token = SlackConfig.from_env({"RESPONDER_SLACK_TOKEN_FILE": str(tmp_path / "token"),
                                  "RESPONDER_SLACK_CHANNEL": "C123"})
    assert token.token == TOKEN


@pytest.mark.parametrize(("env", "names"), [
    ({"RESPONDER_SLACK_TOKEN": TOKEN}, "RESPONDER_SLACK_CHANNEL"),
    ({"RESPONDER_SLACK_TOKEN": TOKEN, "RESPONDER_SLACK_CHANNEL": "#c",
      "RESPONDER_SLACK_WEBHOOK_URL": "https://hooks.example/x"}, "RESPONDER_SLACK_WEBHOOK_URL"),
    ({"RESPONDER_SLACK_WEBHOOK_URL": "https://hooks.example/x",
      "RESPONDER_SLACK_WEBHOOK_URL_FILE": "/x"}, "RESPONDER_SLACK_WEBHOOK_URL_FILE"),
    ({"RESPONDER_SLACK_WEBHOOK_URL_FILE": "/no/such/file"}, "RESPONDER_SLACK_WEBHOOK_URL_FILE"),
    ({"RESPONDER_SLACK_WEBHOOK_URL": "hooks.example/T/B/secretpart"},
     "RESPONDER_SLACK_WEBHOOK_URL"),
    ({"RESPONDER_SLACK_WEBHOOK_URL": "https://hooks.example/x",
      "RESPONDER_SLACK_CHANNEL": "#c"}, "RESPONDER_SLACK_CHANNEL"),
    ({"RESPONDER_SLACK_WEBHOOK_URL": "https://hooks.example/x",
      "RESPONDER_SLACK_MIN_PRIORITY": "loud"}, "RESPONDER_SLACK_MIN_PRIORITY"),
    ({"RESPONDER_SLACK_WEBHOOK_URL": "https://hooks.example/x",
      "RESPONDER_SLACK_WINDOW_SECONDS": "-1"}, "RESPONDER_SLACK_WINDOW_SECONDS"),
    ({"RESPONDER_SLACK_WEBHOOK_URL": "https://hooks.example/x",
      "RESPONDER_SLACK_TIMEOUT": "soon"}, "RESPONDER_SLACK_TIMEOUT"),
    ({"RESPONDER_SLACK_TOKEN": TOKEN, "RESPONDER_SLACK_CHANNEL": "#c",
      "RESPONDER_SLACK_API_URL": "slack.com"}, "RESPONDER_SLACK_API_URL"),
])
def test_bad_settings_name_the_variable_and_never_echo_secrets(env, names):
    with pytest.raises(ConfigError) as error:
        SlackConfig.from_env(env)
    assert names in str(error.value)
    assert TOKEN not in str(error.value) and "secretpart" not in str(error.value)


def test_empty_secret_file_is_an_error(tmp_path):
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ConfigError, match="RESPONDER_SLACK_TOKEN_FILE: .* is empty"):
        SlackConfig.from_env({"RESPONDER_SLACK_TOKEN_FILE": str(tmp_path / "token")})


def test_secrets_are_absent_from_repr_str_and_describe():
    url = "https://hooks.example/T000/B000/secretpart"
    for config in (SlackConfig(webhook_url=url),
                   SlackConfig(token=TOKEN, channel="#security")):
        shown = " ".join([repr(config), str(config), str(config.describe()),
                          slack_status(config)])
        assert "secretpart" not in shown and TOKEN not in shown
    assert SlackConfig(webhook_url=url).describe()["RESPONDER_SLACK_WEBHOOK_URL"] == "***"


# --- sending over HTTP -----------------------------------------------------------------

def test_webhook_notification_arrives_over_http(slack, make_notifier, results):
    notifier = make_notifier()
    event, reports = shell_event(), [report()]
    notifier.notify(event, reports, ("kill-shells",))
    assert notifier.flush(5)
    assert results == ["sent"]
    assert [r.path for r in slack.state.requests] == ["/services/T000/B000/secret-webhook-part"]
    assert slack.state.bodies() == [build_slack_message(event, reports, ("kill-shells",))]


def test_web_api_posts_to_the_channel_with_the_token(slack, make_notifier, results):
    notifier = make_notifier(webhook=False)
    notifier.notify(shell_event(), [report()], ("kill-shells",))
    assert notifier.flush(5)
    assert results == ["sent"]
    (request,) = slack.state.requests
    assert request.path == "/api/chat.postMessage"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.body["channel"] == "#security"
    assert request.body["text"].startswith("[Critical] Terminal shell in container")


def test_maybe_notify_applies_the_table_choice_and_min_priority(slack, make_notifier, results):
    notifier = make_notifier(min_priority=Priority.ERROR)
    assert not notifier.maybe_notify(shell_event(priority="Warning"), [report()], ("k",),
                                     {"kill-shells": None})
    assert not notifier.maybe_notify(shell_event(), [report()], ("k",), {"kill-shells": ()})
    assert notifier.maybe_notify(shell_event(), [report()], ("k",), {"kill-shells": None})
    assert notifier.flush(5)
    assert results == ["sent"]


@pytest.mark.slow
@pytest.mark.parametrize("webhook", [True, False], ids=["webhook", "web-api"])
def test_429_with_retry_after_is_honoured_then_sent(slack, make_notifier, results, webhook):
    notifier = make_notifier(webhook=webhook)
    slack.state.fail(429, retry_after=1)
    started = time.monotonic()
    notifier.notify(shell_event(), [report()], ("kill-shells",))
    assert notifier.flush(10)
    assert time.monotonic() - started >= 1.0  # waited as Retry-After said
    assert results == ["sent"]
    assert [r.status for r in slack.state.requests] == [429, 200]


@pytest.mark.slow
@pytest.mark.parametrize("webhook", [True, False], ids=["webhook", "web-api"])
def test_500_is_counted_as_failed_and_logged_without_secrets(slack, make_notifier, results,
                                                             logs, webhook):
    notifier = make_notifier(webhook=webhook)
    slack.state.fail(500, times=5)
    notifier.notify(shell_event(), [report()], ("kill-shells",))  # does not raise
    assert notifier.flush(10)
    assert results == ["failed"]
    assert len(slack.state.requests) == 2  # one retry, then it gives up
    assert "Slack notification failed" in logs.text and "HTTP 500" in logs.text
    assert "secret-webhook-part" not in logs.text and TOKEN not in logs.text


def test_timeout_fails_within_its_bound(slack, make_notifier, results, logs):
    notifier = make_notifier(timeout=1.0)
    slack.state.slow(5, times=3)
    started = time.monotonic()
    notifier.notify(shell_event(), [report()], ("kill-shells",))
    assert time.monotonic() - started < 0.5  # the caller never waits for Slack (1 s or more)
    assert notifier.flush(8)
    assert time.monotonic() - started < 5.0  # two tries cut at 1 s, not two of 5 s
    assert results == ["failed"]
    assert "timed out" in logs.text
    assert "secret-webhook-part" not in logs.text


def test_unreachable_slack_fails_without_raising_or_logging_the_url(results, logs):
    config = SlackConfig(webhook_url=f"http://127.0.0.1:{free_port()}/services/T/B/secretpart",
                         timeout=1)
    with SlackNotifier(config, on_result=results.append,
                       retry_handlers=fast_retries()) as notifier:
        notifier.notify(shell_event(), [report()], ("kill-shells",))
        assert notifier.flush(10)
    assert results == ["failed"]
    assert "cannot reach Slack" in logs.text and "secretpart" not in logs.text


def test_storm_of_500_identical_events_becomes_two_messages_with_the_count(
        slack, make_notifier, results):
    clock = FakeClock()
    notifier = make_notifier(clock=clock, window_seconds=60)
    event, reports = shell_event(), [report(outcome=Outcome.ALREADY_DONE, reason="already gone")]
    for _ in range(500):
        notifier.notify(event, reports, ("kill-shells",))
    assert notifier.flush(5)
    assert len(slack.state.bodies()) == 1  # the first goes out at once
    clock.advance(61)
    assert notifier.flush(5)
    bodies = slack.state.bodies()
    assert len(bodies) == 2
    assert bodies[1]["text"].startswith("[Critical] 499× Terminal shell in container")
    assert Counter(results) == {"sent": 2, "aggregated": 499}


def test_web_api_storm_is_one_message_edited_with_the_running_total(slack, make_notifier,
                                                                    results):
    clock = FakeClock()
    notifier = make_notifier(clock=clock, window_seconds=60, webhook=False)
    event, reports = shell_event(), [report()]
    notifier.notify(event, reports, ("kill-shells",))
    assert notifier.flush(5)
    for _ in range(499):
        notifier.notify(event, reports, ("kill-shells",))
    clock.advance(61)
    assert notifier.flush(5)
    for _ in range(100):  # the storm goes on into a second window: the same message again
        notifier.notify(event, reports, ("kill-shells",))
    clock.advance(61)
    assert notifier.flush(5)
    paths = [r.path for r in slack.state.requests]
    assert paths == ["/api/chat.postMessage", "/api/chat.update", "/api/chat.update"]
    updates = [r.body for r in slack.state.requests[1:]]
    assert [u["ts"] for u in updates] == ["1.0", "1.0"] and updates[0]["channel"] == "C123"
    assert updates[0]["text"].startswith("[Critical] 500× Terminal shell in container")
    assert updates[1]["text"].startswith("[Critical] 600× Terminal shell in container")
    assert Counter(results) == {"sent": 1, "updated": 2, "aggregated": 599}


def test_coalesced_events_are_counted_in_the_summary_of_the_response_that_ran(
        slack, make_notifier, results):
    clock = FakeClock()
    notifier = make_notifier(clock=clock, window_seconds=60)
    event = shell_event()
    notifier.notify(event, [report()], ("kill-shells",))  # the one that acted
    coalesced = [report(outcome=Outcome.COALESCED, reason="same table rule and target")]
    for _ in range(9):
        notifier.notify(event, coalesced, ("kill-shells",))
    clock.advance(61)
    assert notifier.flush(5)
    summary = slack.state.bodies()[1]
    assert summary["text"].startswith("[Critical] 9× Terminal shell in container")
    assert "coalesced" not in json.dumps(summary) and "done" in json.dumps(summary)


def test_coalesced_outcome_reads_as_coalesced_not_failed():
    result = Result(Outcome.COALESCED, "handled 3 time(s) within the last 30 s")
    assert outcome_text(result) == "coalesced: handled 3 time(s) within the last 30 s"


def test_a_coalesced_event_asks_for_a_notification_so_it_is_counted():
    reports = [report(outcome=Outcome.COALESCED, reason="x")]
    assert should_notify({"kill-shells": None}, reports, shell_event(), Priority.DEBUG)


def test_window_closes_on_its_own_with_a_real_clock(slack, make_notifier, results):
    notifier = make_notifier(window_seconds=0.3)
    for _ in range(500):
        notifier.notify(shell_event(), [report()], ("kill-shells",))
    deadline = time.monotonic() + 5
    while len(slack.state.bodies()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    bodies = slack.state.bodies()
    assert len(bodies) == 2 and "499×" in bodies[1]["text"]


def test_storm_summary_shows_a_failure_even_if_later_events_succeeded(slack, make_notifier):
    clock = FakeClock()
    notifier = make_notifier(clock=clock)
    event = shell_event()
    notifier.notify(event, [report()], ("kill-shells",))
    notifier.notify(event, [report(outcome=Outcome.FAILED, reason="HTTP 403: no")], ("k",))
    notifier.notify(event, [report(outcome=Outcome.ALREADY_DONE, reason="already gone")], ("k",))
    clock.advance(61)
    assert notifier.flush(5)
    summary = slack.state.bodies()[1]
    assert summary["text"].endswith("delete-pod FAILED") and "2×" in summary["text"]


def test_different_pods_are_not_aggregated_together(slack, make_notifier, results):
    notifier = make_notifier(clock=FakeClock())
    for pod in ("a", "b", "c"):
        notifier.notify(shell_event(output_fields={"k8s.pod.name": pod}), [report()], ("k",))
    assert notifier.flush(5)
    assert results == ["sent"] * 3


def test_close_sends_open_window_summaries(slack, make_notifier, results):
    notifier = make_notifier(clock=FakeClock())
    for _ in range(3):
        notifier.notify(shell_event(), [report()], ("kill-shells",))
    assert notifier.close(5)
    bodies = slack.state.bodies()
    assert len(bodies) == 2 and "2×" in bodies[1]["text"]
    notifier.notify(shell_event(output_fields={"k8s.pod.name": "late"}), [], ())
    assert results[-1] == "dropped"


def test_full_queue_drops_and_reports_it(slack, make_notifier, results, logs):
    slack.state.slow(0.5, times=10)
    notifier = make_notifier(clock=FakeClock(), queue_size=1, timeout=0.1)
    for pod in ("a", "b", "c", "d"):
        notifier.notify(shell_event(output_fields={"k8s.pod.name": pod}), [report()], ("k",))
    assert "dropped" in results
    assert "Slack notification dropped" in logs.text


def test_a_broken_result_callback_does_not_stop_sending(slack):
    def explode(result):
        raise RuntimeError("counter broke")

    config = SlackConfig(webhook_url=slack.webhook_url, timeout=2)
    with SlackNotifier(config, on_result=explode) as notifier:
        notifier.notify(shell_event(), [report()], ("k",))
        notifier.notify(shell_event(output_fields={"k8s.pod.name": "b"}), [report()], ("k",))
        assert notifier.flush(5)
    assert len(slack.state.bodies()) == 2


def test_send_alert_posts_a_plain_alert(slack, make_notifier, results):
    notifier = make_notifier()
    notifier.send_alert("delete limit reached: 10 pods in 60s")
    assert notifier.flush(5)
    (body,) = slack.state.bodies()
    assert body["text"] == ":warning: falco-responder: delete limit reached: 10 pods in 60s"
    assert results == ["sent"]


def test_secrets_never_reach_the_logs_even_at_debug(slack, make_notifier, logs):
    for webhook in (True, False):
        notifier = make_notifier(webhook=webhook, retry_handlers=fast_retries())
        slack.state.fail(500, times=2)
        notifier.notify(shell_event(), [report()], ("k",))
        assert notifier.flush(10)
        notifier.close(5)
    assert "Slack notification failed" in logs.text
    assert "secret-webhook-part" not in logs.text and TOKEN not in logs.text


def test_notify_returns_at_once_while_slack_is_slow(slack, make_notifier):
    slack.state.slow(1, times=5)
    notifier = make_notifier(clock=FakeClock(), timeout=0.1)
    started = time.monotonic()
    threads = [threading.Thread(target=notifier.notify,
                                args=(shell_event(output_fields={"k8s.pod.name": str(i)}),
                                      [report()], ("k",))) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - started < 0.5


def test_undo_is_offered_for_one_event_whose_undoable_action_acted_never_in_a_summary():
    from responder.notify.message import build_slack_message

    event = event_from_dict(netcat_event("u-undo"))
    target = Target("shop", "web")
    decision = Decision("isolate", "isolate-pod", {}, target, ("namespace", "pod"), False)
    reports = [ActionReport(decision, target, Result(Outcome.DONE))]

    def buttons(message):
        return [e["action_id"] for b in message["attachments"][0]["blocks"]
                if b["type"] == "actions" for e in b["elements"]]
    assert buttons(build_slack_message(event, reports, ["isolate"],
                                       undoable={"isolate-pod"})) == ["undo"]
    assert buttons(build_slack_message(event, reports, ["isolate"], count=3,
                                       undoable={"isolate-pod"})) == []
    assert buttons(build_slack_message(event, reports, ["isolate"])) == []
