"""What a table change does to recorded events: the decisions two tables make, compared.

Pure functions over replay lines (`responder replay`'s output shape), shared by
`responder replay --against`/`--expect` and the console's table page.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any


def decision_change(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
                    ) -> dict[str, Any] | None:
    """How one event's replay line differs between two tables, or None when it does not.

    The answer names the event and lists `added` and `removed` actions and `changed` ones
    (same action and target, another outcome or reason), each as replay shows them."""
    before_actions = _actions(before)
    after_actions = _actions(after)
    if not (_has_params(before_actions) and _has_params(after_actions)):
        # An expectation recorded before replay lines carried params: compare the rest.
        before_actions, after_actions = _without_params(before_actions), \
            _without_params(after_actions)
    # An error line that only one side has (an event that no longer parses, or now does) is
    # a change; the wording of an error on both sides is not a decision.
    if (before_actions == after_actions and _matched(before) == _matched(after)
            and _is_error(before) == _is_error(after)):
        return None
    old = _keyed(before_actions)
    new = _keyed(after_actions)
    line = after or before or {}
    return {
        "uuid": line.get("uuid"), "rule": line.get("rule"), "priority": line.get("priority"),
        "matched": {"before": _matched(before), "after": _matched(after)},
        "added": [a for k, a in new.items() if k not in old],
        "removed": [a for k, a in old.items() if k not in new],
        "changed": [{"before": old[k], "after": a} for k, a in new.items()
                    if k in old and old[k] != a],
    }


def changed_events(before: Iterable[Mapping[str, Any]], after: Iterable[Mapping[str, Any]]
                   ) -> list[dict[str, Any]]:
    """The events whose decisions differ, in the order of `after` (then events only
    `before` has). Lines are paired by uuid (the n-th line with a uuid on one side with the
    n-th on the other: a file may hold an event twice); error lines (`{"line", "error"}`)
    by line."""
    old = dict(_keyed_lines(before))
    changes = []
    for key, line in _keyed_lines(after):
        change = decision_change(old.pop(key, None), line)
        if change is not None:
            changes.append(_with_error(change, line))
    for line in old.values():
        change = decision_change(line, None)
        if change is not None:
            changes.append(_with_error(change, line))
    return changes


def _with_error(change: dict[str, Any], line: Mapping[str, Any]) -> dict[str, Any]:
    if "error" in line:
        return {**change, "line": line.get("line"), "error": line["error"]}
    return change


def _keyed_lines(lines: Iterable[Mapping[str, Any]]
                 ) -> Iterator[tuple[tuple[str, Any, int], Mapping[str, Any]]]:
    seen: dict[tuple[str, Any], int] = {}
    for line in lines:
        base = ("line", line.get("line")) if _is_error(line) else ("uuid", line.get("uuid"))
        seen[base] = seen.get(base, 0) + 1
        yield (*base, seen[base]), line


def _is_error(line: Mapping[str, Any] | None) -> bool:
    return line is not None and "error" in line


def _actions(line: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    return list((line or {}).get("actions") or [])


def _has_params(actions: list[Mapping[str, Any]]) -> bool:
    return all("params" in action for action in actions)


def _without_params(actions: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [{k: v for k, v in action.items() if k != "params"} for action in actions]


def _matched(line: Mapping[str, Any] | None) -> list[str]:
    return list((line or {}).get("matched") or [])


def _keyed(actions: list[Mapping[str, Any]]) -> dict[tuple[Any, ...], Mapping[str, Any]]:
    """Each action by (action, target, n): the n-th use of the same action on the same
    target (two table rules may both label a pod) stays a decision of its own."""
    keyed: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    seen: dict[tuple[Any, ...], int] = {}
    for action in actions:
        base = (action.get("action"), tuple(sorted((action.get("target") or {}).items())))
        seen[base] = seen.get(base, 0) + 1
        keyed[(*base, seen[base])] = action
    return keyed
