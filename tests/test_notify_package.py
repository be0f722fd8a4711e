"""The notify package keeps its concerns apart: the message builder and the policy are pure
(no Slack client, no threads), so they can be used and tested without sending anything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "responder" / "notify"
IO_MODULES = ("slack_sdk", "threading", "urllib", "socket", "requests", ".sender", "os")


def imported(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


@pytest.mark.parametrize("module", ["message", "policy"])
def test_builder_and_policy_do_no_io(module):
    names = imported(module)
    assert names, "the module imports nothing: the check would prove nothing"
    assert not {n for n in names for io in IO_MODULES if n == io or n.startswith(io + ".")}


def test_only_the_sender_talks_to_slack():
    users = sorted(p.stem for p in PACKAGE.glob("*.py")
                   if any(n.startswith("slack_sdk") for n in imported(p.stem)))
    assert users == ["sender"]
