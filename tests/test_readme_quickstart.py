"""The README's first quickstart step does what it shows: the shipped table checks, and the
replay's table output holds the excerpt the README prints, line for line."""

from __future__ import annotations

import re
from pathlib import Path

from responder.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
EVENTS = str(ROOT / "tests" / "data" / "recorded-events.jsonl")
TABLE = str(ROOT / "manifests" / "actions.yaml")


def excerpt() -> list[str]:
    """The lines of the README's replay output block (the one starting with its header)."""
    (block,) = re.findall(r"```\n(FALCO RULE .*?)```", README, re.S)
    return block.splitlines()


def test_the_readme_runs_check_and_replay_on_the_shipped_table():
    assert "responder check manifests/actions.yaml\n" in README
    assert ("responder replay tests/data/recorded-events.jsonl --actions manifests/actions.yaml"
            " --format table\n") in README


def test_the_shipped_table_checks(capsys):
    assert main(["check", TABLE]) == 0, capsys.readouterr().err


def test_the_replay_excerpt_is_what_replay_prints(capsys):
    assert main(["replay", EVENTS, "--actions", TABLE, "--format", "table"]) == 0
    printed = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    shown = excerpt()
    assert len(shown) >= 3
    assert shown[0] == printed[0]  # the header, its column widths included
    missing = [line for line in shown[1:] if line.rstrip() not in printed]
    assert missing == []
