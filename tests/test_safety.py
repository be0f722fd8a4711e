"""Safety properties: a stale or forged event never acts on the wrong object, never hides a
real one, and no outage or reload makes the responder act twice or skip an action."""

import json
import re

import pytest
import redis

from responder.actions import Outcome, default_registry
from responder.decisions import plan_response
from responder.errors import ConfigError
from responder.events import event_from_dict
from responder.metrics import MAX_EVENT_SERIES
from responder.retry import is_retryable
from responder.settings import Settings
from responder.table import parse_table
from responder.worker import decision_slots, prior_results

NETCAT = "Netcat Remote Code Execution in Container"
TABLE = f"""
defaults: {{dry_run: false, max_cordoned_nodes: 1}}
rules:
  - name: respond
    match: {{rules: ["{NETCAT}"]}}
    actions: [{{action: delete-pod}}, {{action: cordon-node}}]
"""


def test_outcomes_of_an_earlier_try_follow_their_action_across_a_table_reload():
    registry = default_registry()
    before = parse_table("rules:\n  - {name: r, match: {rules: [x]}, actions: "
                         "[{action: label-pod, params: {labels: {a: b}}}, "
                         "{action: delete-pod}]}", "t", registry)
    after = parse_table("rules:\n  - {name: r, match: {rules: [x]}, actions: "
                        "[{action: delete-pod}, "
                        "{action: label-pod, params: {labels: {a: b}}}]}", "t", registry)
    e = event_from_dict({"rule": "x", "priority": "Notice", "output_fields": {}})
    first = decision_slots(plan_response(before, registry, e))
    recorded = [{"slot": first[0], "outcome": "done"}]  # the label ran, the delete did not
    prior = prior_results(plan_response(after, registry, e), recorded)
    assert {i: r.outcome for i, r in prior.items()} == {1: Outcome.DONE}


def test_redis_outage_counts_as_transient():
    assert is_retryable(redis.exceptions.ConnectionError("down"))
    assert is_retryable(redis.exceptions.TimeoutError("slow"))


def test_blank_uuid_falls_back_to_the_content_hash():
    a = event_from_dict({"uuid": "  ", "rule": "a", "priority": "Notice", "output_fields": {}})
    b = event_from_dict({"uuid": "", "rule": "b", "priority": "Notice", "output_fields": {}})
    assert a.uuid.strip() and a.uuid != b.uuid


def test_sender_chosen_rule_names_cannot_grow_the_metrics_without_bound(make_app, make_table):
    app = make_app(make_table(TABLE), max_body_bytes=4096)
    client = app.test_client()
    for i in range(MAX_EVENT_SERIES + 20):
        client.post("/", data=json.dumps({"rule": f"r{i}", "priority": "Notice",
                                          "output_fields": {}}))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'rule="other"' in text
    assert text.count("responder_events_received_total{") == MAX_EVENT_SERIES + 1


def test_sender_chosen_sources_cannot_grow_the_metrics_without_bound(make_app, make_table):
    app = make_app(make_table(TABLE), max_body_bytes=4096)
    client = app.test_client()
    for source in [f"s{i}" for i in range(60)] + ["k8s_audit", "okta"]:
        client.post("/", data=json.dumps({"rule": "r", "priority": "Notice", "source": source,
                                          "output_fields": {}}))
    text = client.get("/metrics").get_data(as_text=True)
    # Sources Falco sends keep their name; any other is "other".
    assert sorted(re.findall(r'responder_events_received_total\{.*source="(\w+)"', text)) == [
        "k8s_audit", "okta", "other"]


@pytest.mark.parametrize(("env", "message"), [
    ({"RESPONDER_LOG_LEVEL": "verbose"}, "RESPONDER_LOG_LEVEL: must be one of"),
    ({"RESPONDER_REDIS_URL": "http://user:hunter2@x"}, "RESPONDER_REDIS_URL: must start"),
])
def test_bad_settings_name_the_variable_and_hide_secrets(env, message):
    with pytest.raises(ConfigError, match=message) as info:
        Settings.from_env(env)
    assert "hunter2" not in str(info.value)


def test_undecodable_token_file_is_a_config_error(tmp_path):
    (tmp_path / "token").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        _ = Settings.from_env({"RESPONDER_AUTH_TOKEN_FILE": str(tmp_path / "token")}).token
