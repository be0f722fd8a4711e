"""The settings table in docs/deployment.md says what the code declares: every variable the
responder reads is documented, and every default it shows is the declared one."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from responder.settings import GROUPS, all_variables

DOC = Path(__file__).parent.parent / "docs" / "deployment.md"
ROW = re.compile(r"^\| (`RESPONDER_[^|]+) \| ([^|]+) \|", re.M)


def documented() -> dict[str, str]:
    """Each variable of the table's first column, to the default cell (split on " / " where
    one row documents two variables)."""
    rows = {}
    for names, defaults in ROW.findall(DOC.read_text()):
        names_list = re.findall(r"`(RESPONDER_[A-Z_*]+)`", names)
        cells = [d.strip() for d in defaults.split(" / ")]
        for i, name in enumerate(names_list):
            rows[name] = cells[i] if len(cells) == len(names_list) else cells[0]
    return rows


def declared_defaults() -> dict[str, object]:
    return {f.metadata["env"]: f.default for group in GROUPS.values()
            for f in dataclasses.fields(group) if "env" in f.metadata}


def shown(value: object) -> str | None:
    """A default as the table writes it, or None where the table explains it in words."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def test_every_variable_is_in_the_settings_table():
    rows = documented()
    slack = {name for name in all_variables() if name.startswith("RESPONDER_SLACK_")}
    missing = [name for name in all_variables()
               if name not in rows and name not in slack and not name.endswith("_FILE")]
    assert missing == []
    assert "RESPONDER_SLACK_*" in rows


@pytest.mark.parametrize("name,default", sorted(declared_defaults().items()))
def test_the_table_shows_the_declared_default(name, default):
    cell = documented()[name]
    # Defaults the code computes (the packaged table, the service account's namespace, the
    # metrics directory's fallback) are said in words, and start with no backtick.
    if default is None and not cell.startswith("`") and cell != "unset":
        return
    if default is not None and not cell.startswith("`"):
        assert cell.startswith(("packaged", "the ")), cell
        return
    assert cell == shown(default)
