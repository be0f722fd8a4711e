"""The notify package keeps its concerns apart: the message builder and the policy are pure
(no Slack client, no threads), so they can be used and tested without sending anything."""

from __future__ import annotations

import ast
import subprocess
import sys
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


def test_reading_settings_loads_neither_the_slack_nor_the_kubernetes_client():
    # responder.settings imports notify.config; `responder serve`'s supervisor and
    # `responder work` (before its SIGTERM handler) must stay small and quick to start.
    code = ("import sys, responder.cli, responder.settings; "
            "print(sorted(m for m in ('slack_sdk', 'kubernetes', 'flask', "
            "'responder.notify.sender') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_package_still_offers_every_name():
    import responder.notify as notify

    assert {name: getattr(notify, name).__module__.rsplit(".", 1)[-1]
            for name in ("SlackConfig", "SlackNotifier", "should_notify",
                         "build_slack_message")} == {
        "SlackConfig": "config", "SlackNotifier": "sender", "should_notify": "policy",
        "build_slack_message": "message"}
    with pytest.raises(AttributeError):
        _ = notify.no_such_name
