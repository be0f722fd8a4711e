"""docs/table-ci.md cannot rot: its pytest example and its CI job's `responder` commands run
verbatim on a team's layout, and its `--against` output is what the command prints."""

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from responder.cli import main

from .conftest import DATA
from .test_replay_diff import changed_table_text

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "table-ci.md"


def section(heading: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def blocks(text: str, lang: str) -> list[str]:
    """The bodies of the fenced blocks in `text` opened with ```lang (an empty lang: plain)."""
    found, body, opened = [], [], None
    for line in text.splitlines(keepends=True):
        if not line.startswith("```"):
            body.append(line)
        elif opened is None:
            opened, body = line[3:].strip(), []
        else:
            if opened == lang:
                found.append("".join(body))
            opened = None
    return found


def responder_commands(script: str) -> list[list[str]]:
    return [shlex.split(line.strip())[1:] for line in script.splitlines()
            if line.strip().startswith("responder ")]


@pytest.fixture
def team(tmp_path, monkeypatch, capsys):
    """A team's repository as the doc lays it out, its decisions recorded by the doc's own
    recording command."""
    (tmp_path / "alerts").mkdir()
    (tmp_path / "tests").mkdir()
    shutil.copy(DATA / "replay-actions.yaml", tmp_path / "actions.yaml")
    shutil.copy(DATA / "recorded-events.jsonl", tmp_path / "alerts" / "events.jsonl")
    monkeypatch.chdir(tmp_path)
    intro = DOC.read_text().split("\n## ")[0]
    [record] = [c for b in blocks(intro, "sh") for c in responder_commands(b)]
    assert "--write-expect" in record and main(record) == 0
    capsys.readouterr()
    return tmp_path


def load_example(team: Path):
    """The doc's pytest test, written where the doc says to put it, imported as pytest would."""
    [code] = blocks(section("A pytest test"), "python")
    path = team / "tests" / "test_action_table.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("test_action_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pytest_example_passes_on_recorded_decisions(team, capsys):
    example = load_example(team)
    tests = [getattr(example, n) for n in dir(example) if n.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test(capsys)


def test_the_pytest_example_fails_showing_the_changed_decisions(team, capsys):
    example = load_example(team)
    (team / "actions.yaml").write_text(changed_table_text())
    with pytest.raises(AssertionError) as failure:
        example.test_the_table_decides_our_recorded_alerts_as_recorded(capsys)
    message = str(failure.value)
    assert "5 of 20 event(s) decided differently than recorded in" in message
    assert "OUTCOME (RECORDED → NOW)" in message
    assert re.search(r"9b58ab14-\S+ +Terminal shell in container +Notice +changed +label-pod "
                     r"+falco/falco-7g7mg +skipped: namespace falco is protected → would-run",
                     message)


def test_the_pytest_example_fails_on_a_broken_table_naming_rule_and_key(team, capsys):
    example = load_example(team)
    (team / "actions.yaml").write_text("rules: [{name: x, match: {rules: [a]}, "
                                       "actions: [{action: explode}]}]\n")
    with pytest.raises(AssertionError, match=r"rule #1 \(x\): actions\[1\]\.action: unknown"):
        example.test_the_table_is_valid(capsys)


def workflow_commands() -> list[list[str]]:
    [text] = blocks(section("A CI job"), "yaml")
    steps = yaml.safe_load(text)["jobs"]["table"]["steps"]
    return [c for s in steps if "run" in s for c in responder_commands(s["run"])]


def test_the_ci_job_runs_in_the_image_the_cluster_runs():
    # The package is not on PyPI: the job takes the responder from the deployed image.
    [text] = blocks(section("A CI job"), "yaml")
    job = yaml.safe_load(text)["jobs"]["table"]
    assert "falco-responder:" in job["container"]["image"]
    assert not [s for s in job["steps"] if "pip install" in s.get("run", "")]


def test_the_ci_job_can_check_out_in_the_image():
    # The image's USER 10001 cannot write the runner's workspace (actions/checkout fails
    # with EACCES in a job container run as another user), and without git checkout
    # downloads a tarball, so `git show origin/<base>:actions.yaml` would find no history.
    [text] = blocks(section("A CI job"), "yaml")
    job = yaml.safe_load(text)["jobs"]["table"]
    assert "--user root" in job["container"]["options"]
    uses = [s.get("uses", "") for s in job["steps"]]
    checkout = next(i for i, u in enumerate(uses) if u.startswith("actions/checkout@"))
    assert any("install" in s.get("run", "") and " git" in s["run"]
               for s in job["steps"][:checkout])
    assert job["steps"][checkout]["with"]["fetch-depth"] == 0


def test_the_ci_jobs_commands_pass_then_fail_on_an_unrecorded_change(team, capsys):
    commands = workflow_commands()
    assert [c[0] for c in commands] == ["check", "replay", "replay"]
    shutil.copy(team / "actions.yaml", team / "base-actions.yaml")
    assert [main(c) for c in commands] == [0, 0, 0]
    (team / "actions.yaml").write_text(changed_table_text())
    assert [main(c) for c in commands] == [0, 0, 1]
    out = capsys.readouterr().out
    assert "OUTCOME (BEFORE → AFTER)" in out and "OUTCOME (RECORDED → NOW)" in out


def test_the_against_example_is_what_the_command_prints(team, capsys):
    text = section("What a change does: `--against`")
    [command] = responder_commands(blocks(text, "sh")[0])
    shutil.copy(team / "actions.yaml", team / "base-actions.yaml")
    (team / "actions.yaml").write_text(changed_table_text())
    capsys.readouterr()
    assert main(command) == 0
    out, err = capsys.readouterr()
    assert out == blocks(text, "")[0]
    assert f"(`{err.split(' of ')[0]} of 20 event(s) decided differently" in " ".join(
        text.split())


@pytest.mark.slow
def test_the_pytest_example_runs_under_pytest(team):
    load_example(team)
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    passed = subprocess.run(run, cwd=team, capture_output=True, text=True, timeout=120,
                            check=False)
    assert passed.returncode == 0, passed.stdout
    assert "2 passed" in passed.stdout
    (team / "actions.yaml").write_text(changed_table_text())
    failed = subprocess.run(run, cwd=team, capture_output=True, text=True, timeout=120,
                            check=False)
    assert failed.returncode == 1
    assert "1 failed, 1 passed" in failed.stdout
    assert "skipped: namespace falco is protected → would-run" in failed.stdout
