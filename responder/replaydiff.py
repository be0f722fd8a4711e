"""`responder replay --against/--expect/--write-expect`: decision changes shown, and the
recorded expectation a team's CI holds its table to (read, written, compared).

The expectation file is the replay's own JSON lines with sorted keys, one per event in the
order of the events file, so a re-recording diffs cleanly in git.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError


def expectation_text(lines: Iterable[Mapping[str, Any]]) -> str:
    """Replay lines as an expectation file: JSON with sorted keys, one line each."""
    return "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)


def write_expectation(path: str, lines: Iterable[Mapping[str, Any]]) -> int:
    """Record replay lines at `path`; the number written. ConfigError when it cannot."""
    text = expectation_text(lines)
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the expectation: {exc.strerror}") from None
    return text.count("\n")


def read_expectation(path: str) -> list[dict[str, Any]]:
    """The replay lines recorded at `path`. ConfigError naming the file and line when the
    file cannot be read or a line is not a replay line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read the expectation: {reason}") from None
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            lines.append(_expected_line(path, number, raw))
    return lines


def recorded_without_params(lines: Iterable[Mapping[str, Any]]) -> bool:
    """Whether an expectation was recorded before replay lines carried params: its actions'
    params are then not compared (tablediff), which its CI should be told."""
    return any("params" not in action for line in lines
               for action in line.get("actions") or [])


def _expected_line(path: str, number: int, raw: str) -> dict[str, Any]:
    try:
        line = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: line {number}: not valid JSON: {exc.msg} at column "
                          f"{exc.colno} (record the expectation with --write-expect)") from None
    if not isinstance(line, dict):
        raise ConfigError(f"{path}: line {number}: expected a replay line (a JSON object), "
                          f"got {type(line).__name__}")
    problem = _replay_line_problem(line)
    if problem:
        raise ConfigError(f"{path}: line {number}: {problem}")
    return line


def _replay_line_problem(line: dict[str, Any]) -> str | None:
    """What makes a JSON object no replay line, or None. Checked, so that a hand-edited
    expectation gives this message instead of a traceback in the comparison."""
    if "error" in line:
        number = line.get("line")
        if not isinstance(number, int) or isinstance(number, bool):
            return "'line' must be a number"
    elif "uuid" not in line:
        return "not a replay line: it has neither 'uuid' nor 'line' and 'error'"
    elif not isinstance(line["uuid"], str):
        return "'uuid' must be a string"
    matched = line.get("matched", [])
    if not isinstance(matched, list) or not all(isinstance(m, str) for m in matched):
        return "'matched' must be a list of table rule names"
    actions = line.get("actions", [])
    if not isinstance(actions, list):
        return "'actions' must be a list"
    for index, action in enumerate(actions, 1):
        if not isinstance(action, dict) or not _is_target(action.get("target", {})):
            return (f"actions[{index}] must be an object whose 'target' maps names to "
                    "strings")
    return None


def _is_target(target: Any) -> bool:
    return isinstance(target, dict) and all(
        isinstance(v, str | int | float | None) for v in target.values())


def format_changes(changes: list[dict[str, Any]], before: str = "BEFORE", after: str = "AFTER"
                   ) -> str:
    """Decision changes (tablediff.changed_events) as a human-readable table: one row per
    added, removed or changed action, and per change of the table rules matched; `before`
    and `after` name the two sides in the heading."""
    rows = [("EVENT", "FALCO RULE", "PRIORITY", "CHANGE", "ACTION", "TARGET",
             f"OUTCOME ({before} → {after})")]
    for change in changes:
        rows.extend(_change_rows(change))
    return format_columns(rows)


def _change_rows(change: dict[str, Any]) -> list[tuple[str, ...]]:
    if "error" in change:
        return [(f"line {change.get('line')}", "-", "-", "error", "-", "-",
                 f"error: {change['error']}")]
    head = (str(change.get("uuid")), str(change.get("rule")), str(change.get("priority")))
    rows = []
    matched = change["matched"]
    if matched["before"] != matched["after"]:
        rows.append((*head, "table rules", "-", "-",
                     f"{_names(matched['before'])} → {_names(matched['after'])}"))
    rows += [(*head, "added", *action_cells(a), outcome_cell(a)) for a in change["added"]]
    rows += [(*head, "removed", *action_cells(a), outcome_cell(a)) for a in change["removed"]]
    rows += [(*head, "changed", *action_cells(c["after"]),
              f"{outcome_cell(c['before'])} → {outcome_cell(c['after'])}"
              + params_change(c["before"], c["after"]))
             for c in change["changed"]]
    return rows


def params_change(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """`; params {...} → {...}` when a changed action's params differ (both recorded), else
    nothing."""
    if "params" not in before or "params" not in after or before["params"] == after["params"]:
        return ""
    return (f"; params {json.dumps(before['params'], sort_keys=True)} → "
            f"{json.dumps(after['params'], sort_keys=True)}")


def _names(names: list[str]) -> str:
    return ",".join(names) or "(none)"


def action_cells(action: Mapping[str, Any]) -> tuple[str, str]:
    """A replay line's action as table cells: its name and its target (`ns/pod/node`)."""
    target = "/".join(str(v) for v in (action.get("target") or {}).values()) or "-"
    return str(action.get("action")), target


def outcome_cell(action: Mapping[str, Any]) -> str:
    """A replay line's action outcome as a table cell, with its reason."""
    reason = action.get("reason")
    return f"{action.get('outcome')}: {reason}" if reason else str(action.get("outcome"))


def format_columns(rows: list[tuple[str, ...]]) -> str:
    """Rows as aligned columns (each at most 48 wide); the last column is never cut."""
    widths = [min(max(len(r[i]) for r in rows), 48) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c[:w].ljust(w) for c, w in zip(r, widths, strict=False)) + "  "
                     + r[-1] for r in rows)
