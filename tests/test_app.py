"""The webhook over HTTP: recorded events replayed, every bad-input class, health endpoints."""

import json
import re
import socket
import time

import pytest
from kubernetes import client

from responder.kube import NOT_CHECKED

from .conftest import DATA, recorded_events

EXPECTED = [json.loads(line) for line in (DATA / "expected-replay.jsonl").read_text().splitlines()]
SIDEKICK_HEADERS = {"Content-Type": "application/json; charset=utf-8",
                    "User-Agent": "Falcosidekick"}


@pytest.fixture
def replay_table(make_table):
    return make_table((DATA / "replay-actions.yaml").read_text())


@pytest.fixture
def app(make_app, replay_table):
    return make_app(replay_table)


@pytest.fixture
def app_client(app):
    return app.test_client()


def comparable(decisions):
    """HTTP decisions in replay's shape: no table_rule/dry_run/slot keys, no would-run
    reason."""
    out = []
    for d in decisions:
        d = {k: v for k, v in d.items() if k not in ("table_rule", "dry_run", "slot")}
        if d["outcome"] == "would-run":
            d.pop("reason", None)
        out.append(d)
    return out


def replayed(actions: list[dict]) -> list[dict]:
    """A replay line's actions as a decision shows them: the params are the table's."""
    return [{k: v for k, v in action.items() if k != "params"} for action in actions]


@pytest.mark.parametrize("path", ["/", "/events"])
@pytest.mark.parametrize(("event", "expected"), list(zip(recorded_events(), EXPECTED,
                                                         strict=True)),
                         ids=[f"line{i}" for i in range(1, len(EXPECTED) + 1)])
def test_recorded_events_are_queued_then_get_the_expected_decisions(app, app_client, path,
                                                                   event, expected):
    reply = app_client.post(path, data=json.dumps(event) + "\n", headers=SIDEKICK_HEADERS)
    assert reply.status_code == 202
    body = reply.get_json()
    assert body == {"uuid": expected["uuid"], "rule": expected["rule"],
                    "priority": expected["priority"], "status": "queued",
                    "status_url": f"/events/{expected['uuid']}"}
    assert app.extensions["worker"].run_pending() == 1
    done = app_client.get(body["status_url"]).get_json()
    assert done["state"] == "done"
    assert comparable(done["decisions"]) == replayed(expected["actions"])


@pytest.mark.parametrize(("event", "expected"), list(zip(recorded_events(), EXPECTED,
                                                         strict=True)),
                         ids=[f"line{i}" for i in range(1, len(EXPECTED) + 1)])
def test_recorded_events_inline_get_the_expected_decisions(make_app, replay_table, event,
                                                           expected):
    app_client = make_app(replay_table, intake="inline").test_client()
    reply = app_client.post("/", data=json.dumps(event) + "\n", headers=SIDEKICK_HEADERS)
    assert reply.status_code == 200
    body = reply.get_json()
    assert (body["uuid"], body["rule"], body["matched"]) == (
        expected["uuid"], expected["rule"], expected["matched"])
    assert comparable(body["decisions"]) == replayed(expected["actions"])


def test_sidekick_put_method_is_accepted(app_client):
    reply = app_client.put("/", data=json.dumps(recorded_events()[0]), headers=SIDEKICK_HEADERS)
    assert reply.status_code == 202


def test_cloudevents_binary_mode_is_accepted(app_client):
    headers = {"Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "x",
               "ce-source": "https://falco.org", "ce-type": "falco.rule.output.v1",
               "ce-rule": "Terminal shell in container", "ce-priority": "Critical"}
    reply = app_client.post("/", data=json.dumps(recorded_events()[0]), headers=headers)
    assert reply.status_code == 202
    assert reply.get_json()["rule"] == "Terminal shell in container"


def test_sidekick_test_event_is_accepted_and_ignored(app, app_client):
    event = {"output": "This is a test from falcosidekick", "source": "internal",
             "priority": "Debug", "hostname": "falcosidekick", "rule": "Test rule",
             "time": "2026-11-27T00:00:00Z", "tags": ["test", "example"],
             "output_fields": {"proc.name": "falcosidekick", "user.name": "falcosidekick"}}
    reply = app_client.post("/", data=json.dumps(event), headers=SIDEKICK_HEADERS)
    assert reply.status_code == 202
    app.extensions["worker"].run_pending()
    assert app_client.get(reply.get_json()["status_url"]).get_json()["decisions"] == []


@pytest.mark.parametrize(("data", "content_type", "error"), [
    ("{oops", "application/json", "body is not valid JSON"),
    ("[]", "application/json", "event must be a JSON object, got array"),
    ("\"text\"", "application/json", "event must be a JSON object, got string"),
    ("12:00:00: Notice shell", "text/plain", "set json_output: true"),
    (json.dumps({"priority": "Notice", "output_fields": {}}), "application/json",
     "event has no 'rule'"),
    (json.dumps({"rule": "r", "output_fields": {}}), "application/json",
     "event has no 'priority'"),
    (json.dumps({"rule": "r", "priority": "Notice"}), "application/json",
     "event has no 'output_fields'"),
    (b"\xc3\x28", "application/json", "body is not valid UTF-8"),
    ("", "application/json", "body is empty"),
])
def test_bad_input_gets_400_with_json_error(app_client, data, content_type, error):
    reply = app_client.post("/", data=data, content_type=content_type)
    assert reply.status_code == 400
    assert error in reply.get_json()["error"]


def test_oversized_body_gets_413(make_app, replay_table):
    app = make_app(replay_table, max_body_bytes=2048).test_client()
    event = dict(recorded_events()[0], output="x" * 4096)
    reply = app.post("/", data=json.dumps(event), headers=SIDEKICK_HEADERS)
    assert reply.status_code == 413
    assert "RESPONDER_MAX_BODY_BYTES" in reply.get_json()["error"]


def test_wrong_method_and_unknown_path_get_json_errors(app_client):
    assert app_client.get("/").status_code == 405
    assert "error" in app_client.get("/").get_json()
    assert app_client.post("/nowhere", data="{}").status_code == 404


def test_healthz_answers(app_client):
    assert app_client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_is_ready_without_a_cluster_because_nothing_is_armed(app_client):
    reply = app_client.get("/readyz")
    assert reply.status_code == 200
    assert reply.get_json()["armed"] is False


ARMED = ("rules:\n  - {name: a, match: {rules: [x]}, dry_run: false,"
         " actions: [{action: cordon-node}]}")


def ready_after_probe(app):
    """/readyz once the background probe has checked the API (at start, then every 10 s)."""
    deadline = time.monotonic() + 5
    while (reply := app.get("/readyz")).get_json().get("kubernetes_api") == NOT_CHECKED \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    return reply


def test_readyz_checks_the_api_when_armed(kube, make_app, make_table):
    app = make_app(make_table(ARMED), api_client=kube.api_client()).test_client()
    reply = ready_after_probe(app)
    assert reply.status_code == 200 and reply.get_json()["armed"] is True
    assert reply.get_json()["kubernetes_api"] == "reachable"
    assert ("GET", "/version/") in [(c.method, c.path) for c in kube.api.calls]


def test_readyz_stays_ready_and_says_why_when_armed_and_the_api_is_down(make_app, make_table):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = 0
    app = make_app(make_table(ARMED), api_client=client.ApiClient(configuration)).test_client()
    reply = ready_after_probe(app)
    # Unready, the pod would leave the Service and Falcosidekick would drop every event
    # meanwhile; ready, it queues them for when the API is back.
    assert reply.status_code == 200
    assert "Kubernetes API not reachable" in reply.get_json()["kubernetes_api"]
    assert app.post("/", data=json.dumps(
        {"rule": "x", "priority": "Notice", "output_fields": {}})).status_code == 202


def test_startup_logs_settings_and_dry_run_banner(make_app, replay_table, capsys):
    make_app(replay_table)
    out = capsys.readouterr().out
    assert "RESPONDER_PORT" in out and "DRY-RUN" in out


def test_json_log_format_gives_one_record_per_event_and_per_decision(make_app, replay_table,
                                                                    capsys):
    app = make_app(replay_table, log_format="json")
    capsys.readouterr()
    app.test_client().post("/", data=json.dumps(recorded_events()[0]), headers=SIDEKICK_HEADERS)
    app.extensions["worker"].run_pending()
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    received = [r["event"] for r in records if "event" in r]
    assert received == [{"uuid": EXPECTED[0]["uuid"], "rule": "Terminal shell in container",
                         "priority": "Critical", "source": "syscall",
                         "time": "2023-05-25T13:44:05.478445995Z", "hostname": "falco-xczjd",
                         "tags": ["container", "mitre_execution", "shell"],
                         "output_fields": recorded_events()[0]["output_fields"]}]
    decisions = [r["decision"] for r in records if "decision" in r]
    assert decisions == [{"uuid": EXPECTED[0]["uuid"], "rule": "Terminal shell in container",
                          "table_rule": "quarantine-shells", "action": "label-pod",
                          "target": {"namespace": "default", "pod": "kubecon",
                                     "node": "falco-xczjd"},
                          "outcome": "would-run", "dry_run": True,
                          "reason": "no Kubernetes cluster configured"}]


def test_metrics_count_events_outcomes_and_rejections(app, app_client):
    app_client.post("/", data=json.dumps(recorded_events()[0]), headers=SIDEKICK_HEADERS)
    app_client.post("/", data="{bad", headers=SIDEKICK_HEADERS)
    assert "responder_queue_depth 1.0" in app_client.get("/metrics").get_data(as_text=True)
    app.extensions["worker"].run_pending()
    text = app_client.get("/metrics").get_data(as_text=True)
    assert ('responder_events_received_total{priority="Critical",'
            'rule="Terminal shell in container",source="syscall"} 1.0') in text
    assert 'responder_action_outcomes_total{action="label-pod",outcome="would-run"} 1.0' in text
    assert 'responder_requests_rejected_total{status="400"} 1.0' in text
    assert "responder_action_table_rules 7.0" in text
    assert 'responder_events_intake_total{status="queued"} 1.0' in text
    assert "responder_queue_depth 0.0" in text


def queue_gauge(client, name: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_oldest_pending_age_counts_events_the_worker_has_not_taken_in(app, app_client):
    # With no worker taking anything in (it died, or is restarting), events wait in the
    # spool: an alert on their age must fire all the same.
    app_client.post("/", data=json.dumps(recorded_events()[0]), headers=SIDEKICK_HEADERS)
    time.sleep(0.5)
    assert queue_gauge(app_client, "responder_queue_oldest_pending_seconds") >= 0.4
    app.extensions["worker"].run_pending()
    assert queue_gauge(app_client, "responder_queue_oldest_pending_seconds") == 0
