"""`responder replay --against`, `--expect` and `--write-expect`: only the events whose
decisions differ, a recorded expectation held in CI, and clear errors (exit 2)."""

import io
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from responder.cli import main
from responder.errors import ConfigError
from responder.replaydiff import format_changes, read_expectation
from responder.tablediff import changed_events

from .conftest import DATA

TABLE = DATA / "replay-actions.yaml"
EVENTS = DATA / "recorded-events.jsonl"
EXPECTED = DATA / "expected-replay.jsonl"

# The shell event in the protected falco namespace, and the one Debug event.
FALCO_SHELL = "9b58ab14-1517-5ade-93ce-138c16ba2f96"
DEBUG_SHELL = "37035cd5-f976-5e92-bd98-70347a3f6574"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def changed_table_text():
    """The test table with three edits: shells are also isolated, the falco namespace is no
    longer protected, and the Debug rule is gone (docs/table-ci.md shows the result)."""
    text = TABLE.read_text()
    quarantine = 'params: {labels: {falco-responder/quarantine: "true"}}'
    assert quarantine in text and "[kube-system, falco]" in text
    text = text.replace(quarantine, f"{quarantine}\n      - action: isolate-pod")
    text = text.replace("[kube-system, falco]", "[kube-system]")
    return text[:text.index("  - name: untouched-debug")]


@pytest.fixture
def new_table(tmp_path):
    path = tmp_path / "new.yaml"
    path.write_text(changed_table_text())
    return path


def replay_by_uuid(capsys, table):
    code, out, _ = run(capsys, "replay", EVENTS, "--actions", table)
    assert code == 0
    return {line["uuid"]: line for line in map(json.loads, out.splitlines())}


def test_against_the_same_table_prints_nothing_and_exits_0(capsys):
    code, out, err = run(capsys, "replay", EVENTS, "--actions", TABLE, "--against", TABLE)
    assert (code, out) == (0, "")
    assert err == f"0 of 20 event(s) decided differently by {TABLE} than by {TABLE}\n"


def test_against_prints_exactly_the_events_whose_decisions_differ(capsys, new_table):
    old, new = replay_by_uuid(capsys, TABLE), replay_by_uuid(capsys, new_table)
    differing = [u for u in new if new[u] != old[u]]
    code, out, err = run(capsys, "replay", EVENTS, "--actions", new_table, "--against", TABLE)
    changes = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [c["uuid"] for c in changes] == differing and 0 < len(differing) < 20
    assert err.startswith(f"{len(differing)} of 20 event(s) decided differently by {new_table}")
    falco = next(c for c in changes if c["uuid"] == FALCO_SHELL)
    target = {"namespace": "falco", "pod": "falco-7g7mg"}
    assert falco["added"] == [{"action": "isolate-pod", "target": target,
                               "outcome": "would-run", "params": {}}]
    labels = {"labels": {"falco-responder/quarantine": "true"}}
    assert falco["changed"] == [{
        "before": {"action": "label-pod", "target": target, "outcome": "skipped",
                   "reason": "namespace falco is protected", "params": labels},
        "after": {"action": "label-pod", "target": target, "outcome": "would-run",
                  "params": labels}}]
    debug = next(c for c in changes if c["uuid"] == DEBUG_SHELL)
    assert debug["matched"] == {"before": ["untouched-debug"], "after": []}
    assert [a["action"] for a in debug["removed"]] == ["label-pod"]


def test_against_as_a_table_shows_added_removed_and_changed_actions(capsys, new_table):
    code, out, _ = run(capsys, "replay", EVENTS, "--actions", new_table, "--against", TABLE,
                       "--format", "table")
    rows = [r.split() for r in out.splitlines()]
    assert code == 0
    assert rows[0] == ["EVENT", "FALCO", "RULE", "PRIORITY", "CHANGE", "ACTION", "TARGET",
                       "OUTCOME", "(BEFORE", "→", "AFTER)"]
    shell = [FALCO_SHELL, "Terminal", "shell", "in", "container", "Notice"]
    assert [*shell, "added", "isolate-pod", "falco/falco-7g7mg", "would-run"] in rows
    assert [*shell, "changed", "label-pod", "falco/falco-7g7mg", "skipped:", "namespace",
            "falco", "is", "protected", "→", "would-run"] in rows
    debug = [DEBUG_SHELL, "Run", "shell", "untrusted", "Debug"]
    assert [*debug, "table", "rules", "-", "-", "untouched-debug", "→", "(none)"] in rows
    assert [*debug, "removed", "label-pod", "red-ns/wordpress-66cd544579-cv29k",
            "would-run"] in rows
    assert not any("c4e8daf1" in r[0] and "changed" in r for r in rows)


def test_against_reads_the_events_once_from_stdin(capsys, monkeypatch, new_table):
    monkeypatch.setattr("sys.stdin", io.StringIO(EVENTS.read_text()))
    code, out, _ = run(capsys, "replay", "-", "--actions", new_table, "--against", TABLE)
    assert code == 0 and FALCO_SHELL in out and len(out.splitlines()) > 1


def test_an_event_recorded_twice_is_no_difference(capsys, tmp_path):
    events = tmp_path / "twice.jsonl"
    first = EVENTS.read_text().splitlines()[0]
    events.write_text(f"{first}\n{first}\n")
    code, out, _ = run(capsys, "replay", events, "--actions", TABLE, "--against", TABLE)
    assert (code, out) == (0, "")


def test_the_checked_in_replay_is_an_expectation_as_it_stands(capsys):
    code, out, err = run(capsys, "replay", EVENTS, "--actions", TABLE, "--expect", EXPECTED)
    assert (code, out) == (0, "")
    assert err == f"0 of 20 event(s) decided differently than recorded in {EXPECTED}\n"


def test_write_expect_records_sorted_replay_lines_that_then_pass(capsys, tmp_path):
    recorded = tmp_path / "expected.jsonl"
    code, out, err = run(capsys, "replay", EVENTS, "--actions", TABLE,
                         "--write-expect", recorded)
    assert (code, out, err) == (0, "", f"{recorded}: recorded 20 replay line(s)\n")
    lines = recorded.read_text().splitlines()
    assert lines == [json.dumps(json.loads(e), sort_keys=True)
                     for e in EXPECTED.read_text().splitlines()]
    assert run(capsys, "replay", EVENTS, "--actions", TABLE, "--expect", recorded)[0] == 0


def test_write_expect_without_a_path_rerecords_the_expect_file(capsys, tmp_path, new_table):
    recorded = tmp_path / "expected.jsonl"
    recorded.write_text(EXPECTED.read_text())
    assert run(capsys, "replay", EVENTS, "--actions", new_table, "--expect", recorded)[0] == 1
    code, _, err = run(capsys, "replay", EVENTS, "--actions", new_table, "--expect", recorded,
                       "--write-expect")
    assert code == 0 and err == f"{recorded}: recorded 20 replay line(s)\n"
    assert run(capsys, "replay", EVENTS, "--actions", new_table, "--expect", recorded)[0] == 0


def test_expect_exits_1_with_a_readable_diff_naming_event_action_and_outcomes(capsys,
                                                                               new_table):
    old, new = replay_by_uuid(capsys, TABLE), replay_by_uuid(capsys, new_table)
    differing = sum(new[u] != old[u] for u in new)
    code, out, err = run(capsys, "replay", EVENTS, "--actions", new_table, "--expect", EXPECTED)
    rows = [r.split() for r in out.splitlines()]
    assert code == 1
    assert rows[0][-4:] == ["OUTCOME", "(RECORDED", "→", "NOW)"]
    assert [FALCO_SHELL, "Terminal", "shell", "in", "container", "Notice", "changed",
            "label-pod", "falco/falco-7g7mg", "skipped:", "namespace", "falco", "is",
            "protected", "→", "would-run"] in rows
    assert err.startswith(f"{differing} of 20 event(s) decided differently than recorded in ")
    assert err.endswith("; if intended, record it again with --write-expect\n")


def test_expect_with_json_format_prints_the_changes_as_json_lines(capsys, new_table):
    code, out, _ = run(capsys, "replay", EVENTS, "--actions", new_table, "--expect", EXPECTED,
                       "--format", "json")
    changes = [json.loads(line) for line in out.splitlines()]
    _, against, _ = run(capsys, "replay", EVENTS, "--actions", new_table, "--against", TABLE)
    assert code == 1
    assert changes == [json.loads(line) for line in against.splitlines()]


def test_expect_reports_an_event_that_no_longer_parses(capsys, tmp_path):
    events = tmp_path / "events.jsonl"
    lines = EVENTS.read_text().splitlines()
    events.write_text("\n".join(lines[:2]) + "\n")
    recorded = tmp_path / "expected.jsonl"
    run(capsys, "replay", events, "--actions", TABLE, "--write-expect", recorded)
    events.write_text(lines[0] + "\n{broken\n")
    code, out, _ = run(capsys, "replay", events, "--actions", TABLE, "--expect", recorded)
    rows = [r.split() for r in out.splitlines()]
    assert code == 1
    assert rows[1] == ["line", "2", "-", "-", "error", "-", "-", "error:", "not", "valid",
                       "JSON:", "Expecting", "property", "name", "enclosed", "in", "double",
                       "quotes", "at", "column", "2"]
    second = json.loads(recorded.read_text().splitlines()[1])["uuid"]
    assert [r[6:9] for r in rows[2:]] == [["table", "rules", "-"],
                                          ["removed", "label-pod", "default/alpine"]]
    assert {r[0] for r in rows[2:]} == {second}


@pytest.mark.parametrize(("content", "message"), [
    ('{"uuid": "a", "actions": []}\n{broken\n',
     "line 2: not valid JSON: Expecting property name enclosed in double quotes at column 2"),
    ("[1, 2]\n", "line 1: expected a replay line (a JSON object), got list"),
    ('{"rule": "x"}\n', "line 1: not a replay line: it has neither 'uuid' nor 'line' and 'error'"),
    ('{"uuid": "a", "actions": 3}\n', "line 1: 'actions' must be a list"),
    ('{"uuid": ["a"]}\n', "line 1: 'uuid' must be a string"),
    ('{"line": "2", "error": "x"}\n', "line 1: 'line' must be a number"),
    ('{"uuid": "a", "matched": "r"}\n', "line 1: 'matched' must be a list of table rule names"),
    ('{"uuid": "a", "actions": [1]}\n', "line 1: actions[1] must be an object whose 'target'"),
    ('{"uuid": "a", "actions": [{"target": {"pod": ["p"]}}]}\n',
     "line 1: actions[1] must be an object whose 'target' maps names to strings"),
    (b"\xff\xfe", "cannot read the expectation: not UTF-8 text"),
])
def test_a_bad_expectation_exits_2_naming_file_and_line(capsys, tmp_path, content, message):
    bad = tmp_path / "expected.jsonl"
    (bad.write_bytes if isinstance(content, bytes) else bad.write_text)(content)
    code, out, err = run(capsys, "replay", EVENTS, "--actions", TABLE, "--expect", bad)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {bad}: {message}")


def test_a_missing_expectation_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "replay", EVENTS, "--actions", TABLE,
                       "--expect", tmp_path / "none.jsonl")
    assert code == 2
    assert err == (f"error: {tmp_path / 'none.jsonl'}: cannot read the expectation: "
                   "No such file or directory\n")


def test_a_bad_old_table_exits_2_naming_its_file_rule_and_key(capsys, tmp_path):
    bad = tmp_path / "old.yaml"
    bad.write_text("rules:\n  - name: x\n    match: {priority: '>>Warning'}\n"
                   "    actions: [{action: label-pod}]\n")
    code, out, err = run(capsys, "replay", EVENTS, "--actions", TABLE, "--against", bad)
    assert (code, out) == (2, "")
    assert f"{bad}: rule #1 (x): match.priority: bad priority expression '>>Warning'" in err
    assert f"{bad}: rule #1 (x): actions[1].params.labels: " in err


def test_a_bad_new_table_exits_2_before_anything_is_written(capsys, tmp_path):
    bad, recorded = tmp_path / "new.yaml", tmp_path / "expected.jsonl"
    bad.write_text("rules: [{name: x, match: {rules: [a]}, actions: [{action: explode}]}]\n")
    code, _, err = run(capsys, "replay", EVENTS, "--actions", bad, "--write-expect", recorded)
    assert code == 2 and "rule #1 (x): actions[1].action: unknown action 'explode'" in err
    assert not recorded.exists()


def test_an_unwritable_expectation_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "replay", EVENTS, "--actions", TABLE,
                       "--write-expect", tmp_path / "no" / "such" / "dir.jsonl")
    assert code == 2
    assert "dir.jsonl: cannot write the expectation: No such file or directory" in err


@pytest.mark.parametrize(("options", "message"), [
    (["--write-expect"], "--write-expect needs a path (or --expect's)"),
    (["--against", TABLE, "--expect", EXPECTED], "--against compares two tables"),
    (["--against", TABLE, "--write-expect", "x.jsonl"], "--against compares two tables"),
    (["--to", "http://127.0.0.1:9/", "--expect", EXPECTED], "--to sends events"),
])
def test_options_that_cannot_go_together_exit_2(capsys, options, message):
    code, out, err = run(capsys, "replay", EVENTS, "--actions", TABLE, *options)
    assert (code, out) == (2, "") and err.startswith(f"error: {message}")


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["replay", "missing.jsonl", "--expect", "expected.jsonl"],
    ["replay", str(EVENTS), "--expect", "missing.jsonl"],
    ["replay", str(EVENTS), "--against", "missing.yaml"],
])
def test_the_command_never_shows_a_traceback(tmp_path, argv):
    done = subprocess.run([sys.executable, "-m", "responder.cli", *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr and "missing." in done.stderr


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
LINE_KEYS = st.sampled_from(["uuid", "line", "error", "matched", "actions", "rule", "target",
                             "action", "outcome", "reason"])
ACTION = st.fixed_dictionaries(
    {"action": st.sampled_from(["label-pod", "delete-pod"]),
     "target": st.dictionaries(st.sampled_from(["pod", "node"]), JSON, max_size=2)},
    optional={"outcome": JSON, "reason": JSON})
LINE = st.one_of(
    st.recursive(JSON, lambda inner: st.dictionaries(LINE_KEYS, inner, max_size=5),
                 max_leaves=12),
    st.fixed_dictionaries({"uuid": st.sampled_from(["a", "c4e8daf1-dc01-52f8-a35d-90480d0ed3da"])},
                          optional={"matched": st.lists(st.text(max_size=3), max_size=2),
                                    "actions": st.lists(ACTION | JSON, max_size=3),
                                    "rule": JSON, "priority": JSON}),
    st.fixed_dictionaries({"line": st.integers(1, 3), "error": JSON}))


@pytest.mark.slow
@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, max_size=4))
def test_any_expectation_is_compared_or_refused_never_a_traceback(tmp_path, lines):
    """Whatever a hand-edited expectation holds, reading it either refuses it by line
    (ConfigError) or gives lines the comparison and its table take without an exception."""
    path = tmp_path / "expected.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    try:
        expected = read_expectation(str(path))
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: line ")
        return
    replayed = [json.loads(line) for line in EXPECTED.read_text().splitlines()]
    for before, after in ((expected, replayed), (replayed, expected), (expected, expected)):
        format_changes(changed_events(before, after))


def test_a_change_of_params_alone_is_a_decision_change(capsys, tmp_path):
    """Same actions on the same pods, another label value: the events it changes are listed
    (JSON and table), and --expect fails on them."""
    quarantine = 'params: {labels: {falco-responder/quarantine: "true"}}'
    relabelled = tmp_path / "relabelled.yaml"
    relabelled.write_text(TABLE.read_text().replace(
        quarantine, quarantine.replace('"true"', '"isolated"')))
    code, out, err = run(capsys, "replay", EVENTS, "--actions", relabelled, "--against", TABLE)
    changes = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and changes and err.startswith(f"{len(changes)} of 20 event(s)")
    for change in changes:
        assert (change["added"], change["removed"]) == ([], [])
        [changed] = change["changed"]
        assert changed["before"]["outcome"] == changed["after"]["outcome"]
        assert changed["after"]["params"] == {
            "labels": {"falco-responder/quarantine": "isolated"}}
    code, out, _ = run(capsys, "replay", EVENTS, "--actions", relabelled, "--expect", EXPECTED)
    assert code == 1
    assert ('; params {"labels": {"falco-responder/quarantine": "true"}} → '
            '{"labels": {"falco-responder/quarantine": "isolated"}}') in out


def test_an_expectation_recorded_without_params_still_holds(capsys, tmp_path):
    """Expectations recorded before replay lines carried params compare on the rest, so a
    team's CI does not fail on the upgrade."""
    old = tmp_path / "old-expected.jsonl"
    lines = [json.loads(line) for line in EXPECTED.read_text().splitlines()]
    for line in lines:
        for action in line.get("actions", []):
            del action["params"]
    old.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, out, err = run(capsys, "replay", EVENTS, "--actions", TABLE, "--expect", old)
    assert (code, out) == (0, "")
    assert err.splitlines() == [
        f"{old}: recorded without params, which are then not compared; record it again with "
        "--write-expect to hold them too",
        f"0 of 20 event(s) decided differently than recorded in {old}"]
