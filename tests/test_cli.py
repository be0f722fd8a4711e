"""The `responder` command: check, replay (local and --to a running responder), serve's checks."""

import io
import json
import os
import subprocess
import sys

import pytest
import responses

from responder.cli import main

from .conftest import DATA

TABLE = DATA / "replay-actions.yaml"
EVENTS = DATA / "recorded-events.jsonl"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_accepts_a_valid_table(capsys):
    code, out, _ = run(capsys, "check", str(TABLE))
    assert code == 0
    assert out == f"{TABLE}: OK, 7 rule(s)\n"


def test_check_lists_every_error_and_exits_1(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    match: {priority: '>>Warning'}\n"
                   "    actions: [{action: explode}, {action: delete-pod, params: {x: 1}}]\n")
    code, _, err = run(capsys, "check", str(TABLE), str(bad))
    assert code == 1
    assert err.splitlines() == [
        f"{bad}: 3 problem(s) in the action table",
        f"  {bad}: rule #1 (x): match.priority: bad priority expression '>>Warning': expected "
        "a priority name with an optional >=, <=, >, <, == or !=",
        f"  {bad}: rule #1 (x): actions[1].action: unknown action 'explode' "
        "(known: capture-evidence, cordon-node, delete-pod, isolate-pod, label-pod)",
        f"  {bad}: rule #1 (x): actions[2].params.x: unknown parameter "
        "(known: grace_period_seconds, allow_daemonset)",
    ]


def test_replay_prints_the_expected_line_for_every_recorded_event(capsys):
    code, out, _ = run(capsys, "replay", str(EVENTS), "--actions", str(TABLE))
    assert code == 0
    expected = (DATA / "expected-replay.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in out.splitlines()] == [json.loads(e) for e in expected]


def test_replay_reports_bad_lines_and_goes_on(capsys, tmp_path):
    events = tmp_path / "events.jsonl"
    good = EVENTS.read_text().splitlines()[0]
    events.write_text("\n".join([good, "{broken", "[1]", '{"rule": "r"}', good]) + "\n")
    code, out, _ = run(capsys, "replay", str(events), "--actions", str(TABLE))
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(lines) == 5
    assert lines[1] == {"line": 2, "error": "not valid JSON: Expecting property name enclosed "
                                            "in double quotes at column 2"}
    assert lines[2] == {"line": 3, "error": "event must be a JSON object, got array"}
    assert lines[3] == {"line": 4, "error": "event has no 'priority'"}
    assert lines[4]["matched"] == ["quarantine-shells"]


def test_replay_table_format_is_human_readable(capsys):
    code, out, _ = run(capsys, "replay", str(EVENTS), "--actions", str(TABLE), "--format", "table")
    rows = out.splitlines()
    assert code == 0
    assert rows[0].split() == ["FALCO", "RULE", "PRIORITY", "TABLE", "RULES", "ACTION", "TARGET",
                               "OUTCOME"]
    assert any("namespace falco is protected" in r for r in rows)
    assert any("no match" in r for r in rows)


def test_replay_reads_stdin(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(EVENTS.read_text()))
    code, out, _ = run(capsys, "replay", "-", "--actions", str(TABLE))
    assert code == 0 and len(out.splitlines()) == 20


def test_replay_with_a_bad_table_exits_2_naming_the_file(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: 3\n")
    code, _, err = run(capsys, "replay", str(EVENTS), "--actions", str(bad))
    assert code == 2 and f"{bad}: table: rules: must be a list" in err


@responses.activate
def test_replay_to_url_posts_each_event_like_sidekick(capsys, tmp_path):
    events = tmp_path / "e.jsonl"
    events.write_text("\n".join(EVENTS.read_text().splitlines()[:2]) + "\n")
    responses.post("http://responder:2801/", json={"uuid": "x", "decisions": []}, status=200)
    code, out, _ = run(capsys, "replay", str(events), "--to", "http://responder:2801/",
                       "--token", "s3cret")
    assert code == 0
    assert [json.loads(line)["status"] for line in out.splitlines()] == [200, 200]
    sent = responses.calls[0].request
    assert sent.headers["Authorization"] == "Bearer s3cret"
    assert sent.headers["User-Agent"] == "Falcosidekick"
    assert json.loads(sent.body)["rule"] == "Terminal shell in container"


@responses.activate
def test_replay_to_url_exits_1_when_an_event_is_refused(capsys, tmp_path):
    events = tmp_path / "e.jsonl"
    events.write_text(EVENTS.read_text().splitlines()[0] + "\n")
    responses.post("http://responder:2801/", json={"error": "unauthorized"}, status=401)
    code, out, _ = run(capsys, "replay", str(events), "--to", "http://responder:2801/")
    assert code == 1
    assert json.loads(out) == {"status": 401, "reply": {"error": "unauthorized"}, "line": 1}


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["process", "thread"])
def test_serve_refuses_to_start_with_a_bad_table(tmp_path, worker):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{name: x}]\n")
    env = {**os.environ, "RESPONDER_WORKER": worker, "RESPONDER_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "responder.cli", "serve", "--actions", str(bad),
                           "--port", "2801"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2
    # Said once: the queue worker is not started beside a server that cannot start.
    assert done.stderr.count("rule #1 (x): match: required key is missing") == 1


@pytest.mark.parametrize(("env", "message"), [
    ({"RESPONDER_PORT": "eighty"}, "RESPONDER_PORT: cannot parse 'eighty'"),
    ({"RESPONDER_LOG_FORMAT": "xml"}, "RESPONDER_LOG_FORMAT: must be one of text, json"),
    ({"RESPONDER_DRY_RUN": "perhaps"}, "RESPONDER_DRY_RUN: must be true or false"),
])
def test_serve_refuses_bad_settings_naming_the_variable(capsys, monkeypatch, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, _, err = run(capsys, "serve")
    assert code == 2 and message in err
