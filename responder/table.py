"""The operator's action table: loading, validation with every error reported, and matching."""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .actions import Limits, Registry
from .errors import TableError
from .events import Event, Priority

DEFAULT_TABLE = "default_actions.yaml"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]*$")
_PRIORITY_EXPR = re.compile(r"^\s*(>=|<=|==|!=|>|<)?\s*([A-Za-z]+)\s*$")
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
}
_TOP_KEYS = {"defaults", "rules"}
#: Anchors and aliases may share a block between rules, but a document whose aliases expand
#: to more nodes than this ("billion laughs": a few lines, billions of nodes) is refused
#: before anything walks it: an error message quoting it cost memory without bound.
MAX_EXPANDED_NODES = 1_000_000
#: A table is a few levels deep; far deeper nesting (`[[[[...`) made PyYAML's composer and the
#: checks after it recurse past Python's limit: a RecursionError, not a problem listed.
MAX_DEPTH = 64
#: The defaults every table has; the actions' limits (Action.limits) add theirs.
_DEFAULT_KEYS = {"dry_run", "protected_namespaces", "coalesce_seconds", "skip_standalone_pods"}
_RULE_KEYS = {"name", "match", "actions", "continue", "dry_run", "notify", "allow_unverified",
              "approval"}
_APPROVAL_KEYS = {"required", "timeout", "on_timeout"}
ON_TIMEOUT = ("skip", "run")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "m": 60, "h": 3600}
#: A week: a deadline must stay a date that can be stored and shown (not NaN, not infinite,
#: not past the year 9999), and a request nobody answered in a week is forgotten.
MAX_APPROVAL_TIMEOUT = 7 * 86400.0
DEFAULT_APPROVAL_TIMEOUT = 900.0  # 15 minutes: long enough to see a message, short enough
# that a forgotten request does not hang over the cluster for a shift
NOTIFIERS = ("slack",)
_MATCH_KEYS = {"rules", "priority", "tags", "source", "output_fields"}
_ACTION_KEYS = {"action", "params", "on_failure"}
#: What a failed action means for the actions after it in the same table rule.
ON_FAILURE = ("continue", "stop")


@dataclass(frozen=True)
class PriorityCondition:
    op: str
    priority: Priority

    def holds(self, priority: Priority) -> bool:
        return _COMPARE[self.op](priority, self.priority)

    def __str__(self) -> str:
        return f"{self.op}{self.priority.label}"


@dataclass(frozen=True)
class FieldCondition:
    """An output field equals one of `values`, or (negated) none of them."""

    key: str
    values: tuple[str, ...]
    negated: bool = False

    def holds(self, event: Event) -> bool:
        value = event.field(self.key)
        present = value is not None and _as_text(value) in self.values
        return not present if self.negated else present


@dataclass(frozen=True)
class Match:
    rules: tuple[str, ...] = ()
    priority: PriorityCondition | None = None
    tags: tuple[str, ...] = ()
    source: str | None = None
    output_fields: tuple[FieldCondition, ...] = ()
    # All of `rules` as one regex, built once: matching is per event, on the worker's path.
    rules_regex: re.Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Each name as itself (a "[" in a Falco rule name stays literal), or as a glob.
        alternatives = [f"{re.escape(p)}\\Z|{fnmatch.translate(p)}" for p in self.rules]
        object.__setattr__(self, "rules_regex", re.compile("|".join(alternatives))
                           if alternatives else None)


@dataclass(frozen=True)
class ActionSpec:
    action: str
    params: Mapping[str, Any]
    #: "stop": when this action fails, the table rule's later actions are skipped.
    on_failure: str = "continue"


@dataclass(frozen=True)
class Approval:
    """A table rule's live actions wait for a person (Slack or HTTP) before they run."""

    timeout_seconds: float = DEFAULT_APPROVAL_TIMEOUT
    #: What happens when nobody decides in time: "skip" the actions or "run" them.
    on_timeout: str = "skip"


@dataclass(frozen=True)
class TableRule:
    name: str
    match: Match
    actions: tuple[ActionSpec, ...]
    continue_: bool = True
    dry_run: bool | None = None
    #: Channels to notify; None means the default (notify when an action ran or failed).
    notify: tuple[str, ...] | None = None
    #: Destructive actions may act on events whose pod cannot be verified (no container.id,
    #: as in every k8s_audit event). Never on one whose container.id contradicts the pod.
    allow_unverified: bool = False
    #: None: the rule's actions run at once; else they wait for approval.
    approval: Approval | None = None


@dataclass(frozen=True)
class Table:
    source: str
    rules: tuple[TableRule, ...]
    dry_run: bool = True
    protected_namespaces: frozenset[str] = frozenset({"kube-system"})
    limits: Limits = Limits()
    #: The YAML it was parsed from (the console shows it, and its digest).
    text: str = field(default="", repr=False, compare=False)

    def is_dry_run(self, rule: TableRule) -> bool:
        return self.dry_run if rule.dry_run is None else rule.dry_run

    def approval_of(self, name: str) -> Approval | None:
        """The approval a table rule asks for, by name (None: none, or no such rule)."""
        return next((rule.approval for rule in self.rules if rule.name == name), None)

    @property
    def needs_approval(self) -> bool:
        return any(rule.approval is not None for rule in self.rules)


def load_table(path: str | Path | None, registry: Registry) -> Table:
    """Load and validate a table file; None loads the packaged default. Raises TableError."""
    if path is None:
        text = resources.files("responder").joinpath(DEFAULT_TABLE).read_text("utf-8")
        return parse_table(text, f"<packaged {DEFAULT_TABLE}>", registry)
    return parse_table(read_table_text(path), str(path), registry)


def read_table_text(path: str | Path) -> str:
    """A table file's text; TableError when it cannot be read."""
    try:
        return Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(str(path), [f"cannot read the file: {exc}"]) from None


def parse_table(text: str, source: str, registry: Registry) -> Table:
    """Validate a table's YAML text; TableError lists every problem found, not just the first."""
    try:
        doc = _load_yaml(text, source)
    except yaml.YAMLError as exc:
        raise TableError(source, [f"not valid YAML: {exc}"]) from None
    except _Refused as exc:
        raise TableError(source, [f"table: {exc}"]) from None
    problems: list[str] = []
    table = _build_table(doc, source, registry, problems)
    if problems:
        raise TableError(source, problems)
    return replace(table, text=text)


class _Refused(Exception):
    """A document refused before it is built: too deep, or aliases expanding too far."""


def _load_yaml(text: str, source: str) -> Any:
    """yaml.safe_load, refusing a document nested deeper than MAX_DEPTH or that its aliases
    expand past MAX_EXPANDED_NODES. Syntax errors name `source`, not "<unicode string>"."""
    loader = yaml.SafeLoader(text)
    loader.name = source
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels") from None
        if node is None:
            return None
        _count_nodes(node, {}, set(), 1)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _count_nodes(node: yaml.Node, sizes: dict[int, int], open_: set[int], depth: int) -> int:
    """How many nodes `node` stands for once every alias is expanded (each shared node
    counted once per use, computed once); a node inside itself counts once."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        return 1
    if depth > MAX_DEPTH:
        raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
    open_.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    size = 1 + sum(_count_nodes(child, sizes, open_, depth + 1) for child in children)
    open_.discard(id(node))
    if size > MAX_EXPANDED_NODES:
        raise _Refused(f"its aliases expand to more than {MAX_EXPANDED_NODES} nodes")
    sizes[id(node)] = size
    return size


def match_rules(table: Table, event: Event) -> list[TableRule]:
    """The table rules an event matches, in table order, stopping after one with continue false."""
    if event.is_internal:
        return []
    matched = []
    for rule in table.rules:
        if matches(rule.match, event):
            matched.append(rule)
            if not rule.continue_:
                break
    return matched


def matches(match: Match, event: Event) -> bool:
    """Whether every criterion given in `match` holds for the event."""
    if match.rules_regex is not None and not match.rules_regex.match(event.rule):
        return False
    if match.priority and not match.priority.holds(event.priority):
        return False
    if not set(match.tags) <= set(event.tags):
        return False
    if match.source and match.source != event.source:
        return False
    return all(cond.holds(event) for cond in match.output_fields)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- building and validating ---------------------------------------------------------

class _Problems:
    """Collects problems prefixed with where they are: 'rule #2 (name): key: reason'."""

    def __init__(self, sink: list[str], where: str):
        self.sink, self.where = sink, where

    def add(self, key: str, reason: str) -> None:
        self.sink.append(f"{self.where}: {key}: {reason}" if key else f"{self.where}: {reason}")


def _build_table(doc: Any, source: str, registry: Registry, problems: list[str]) -> Table:
    top = _Problems(problems, "table")
    if not isinstance(doc, dict):
        top.add("", "must be a mapping with 'defaults' and 'rules'")
        return Table(source, ())
    for key in sorted(set(doc) - _TOP_KEYS, key=str):
        top.add(str(key), "unknown key (known: defaults, rules)")
    defaults = _Problems(problems, "defaults")
    dry_run, protected = _build_defaults(doc.get("defaults", {}), registry, defaults)
    limits = _build_limits(doc.get("defaults", {}), registry, defaults)
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list):
        top.add("rules", "must be a list" if "rules" in doc else "required key is missing")
        raw_rules = []
    rules = [_build_rule(i, raw, registry, problems) for i, raw in enumerate(raw_rules, 1)]
    _check_unique_names(rules, problems)
    return Table(source, tuple(rules), dry_run, protected, limits)


def _build_defaults(raw: Any, registry: Registry, problems: _Problems
                    ) -> tuple[bool, frozenset[str]]:
    if not isinstance(raw, dict):
        problems.add("", "must be a mapping")
        return True, frozenset({"kube-system"})
    known = _DEFAULT_KEYS | {limit.key for limit in registry.limits()}
    for key in sorted(set(raw) - known, key=str):
        problems.add(str(key), f"unknown key (known: {', '.join(sorted(known))})")
    dry_run = raw.get("dry_run", True)
    if not isinstance(dry_run, bool):
        problems.add("dry_run", "must be true or false")
        dry_run = True
    protected = raw.get("protected_namespaces", ["kube-system"])
    if not _is_str_list(protected):
        problems.add("protected_namespaces", "must be a list of namespace names")
        protected = ["kube-system"]
    return dry_run, frozenset(protected)


def _build_limits(raw: Any, registry: Registry, problems: _Problems) -> Limits:
    if not isinstance(raw, dict):
        return Limits()
    values: dict[str, Any] = {}
    coalesce = raw.get("coalesce_seconds")
    if coalesce is not None:
        if isinstance(coalesce, bool) or not isinstance(coalesce, int | float) or coalesce < 0:
            problems.add("coalesce_seconds", "must be a number of at least 0")
        else:
            values["coalesce_seconds"] = coalesce
    declared: dict[str, int] = {}
    for limit in registry.limits():
        value = raw.get(limit.key)
        if value is None:
            continue
        found = limit.problems(value)
        for problem in found:
            problems.add(limit.key, problem)
        if not found:
            declared[limit.key] = value
    standalone = raw.get("skip_standalone_pods", False)
    if not isinstance(standalone, bool):
        problems.add("skip_standalone_pods", "must be true or false")
    else:
        values["skip_standalone_pods"] = standalone
    return Limits(**values, declared=declared)


def _build_rule(index: int, raw: Any, registry: Registry, sink: list[str]) -> TableRule:
    name = raw.get("name") if isinstance(raw, dict) else None
    label = f"rule #{index} ({name})" if isinstance(name, str) else f"rule #{index}"
    problems = _Problems(sink, label)
    if not isinstance(raw, dict):
        problems.add("", "must be a mapping")
        return TableRule(f"#{index}", Match(), ())
    for key in sorted(set(raw) - _RULE_KEYS, key=str):
        problems.add(str(key), f"unknown key (known: {', '.join(sorted(_RULE_KEYS))})")
    if name is None:
        problems.add("name", "required key is missing")
    elif not isinstance(name, str) or not NAME_PATTERN.match(name):
        problems.add("name", "must match ^[a-z][a-z0-9-]*$")
    match = _build_match(raw.get("match"), problems)
    actions = _build_actions(raw.get("actions"), registry, problems)
    return TableRule(
        name=name if isinstance(name, str) else f"#{index}",
        match=match,
        actions=actions,
        continue_=_optional_bool(raw, "continue", True, problems),
        dry_run=_optional_bool(raw, "dry_run", None, problems),
        notify=_build_notify(raw, problems),
        allow_unverified=_build_allow_unverified(raw, actions, registry, problems),
        approval=_build_approval(raw.get("approval"), problems),
    )


def parse_duration(raw: Any) -> float | None:
    """Seconds from a number of seconds or a string such as 30s, 15m, 2h; None if neither."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw)
    found = _DURATION.match(raw) if isinstance(raw, str) else None
    return float(found.group(1)) * _UNIT_SECONDS[found.group(2)] if found else None


def _build_approval(raw: Any, problems: _Problems) -> Approval | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.add("approval", "must be a mapping such as {required: true, timeout: 15m, "
                     "on_timeout: skip}")
        return None
    for key in sorted(set(raw) - _APPROVAL_KEYS, key=str):
        problems.add(f"approval.{key}",
                     f"unknown key (known: {', '.join(sorted(_APPROVAL_KEYS))})")
    required = raw.get("required", True)
    if not isinstance(required, bool):
        problems.add("approval.required", "must be true or false")
    seconds = parse_duration(raw.get("timeout", DEFAULT_APPROVAL_TIMEOUT))
    # `not (0 < x <= max)` also refuses NaN, which cannot be stored as a deadline.
    if seconds is None or not 0 < seconds <= MAX_APPROVAL_TIMEOUT:
        problems.add("approval.timeout", "must be a positive duration of at most 168h: "
                     "seconds, or a number with s, m or h (30s, 15m, 2h)")
        seconds = DEFAULT_APPROVAL_TIMEOUT
    on_timeout = raw.get("on_timeout", "skip")
    if on_timeout not in ON_TIMEOUT:
        problems.add("approval.on_timeout", "must be skip or run")
        on_timeout = "skip"
    return Approval(seconds, on_timeout) if required is True else None


def _build_allow_unverified(raw: dict, actions: tuple[ActionSpec, ...], registry: Registry,
                            problems: _Problems) -> bool:
    allow = _optional_bool(raw, "allow_unverified", False, problems)
    destructive = [a.name for a in registry if a.destructive]
    if allow and actions and not any(spec.action in destructive for spec in actions):
        # Said where nothing needs it, it would be read as protection it does not give.
        problems.add("allow_unverified", "has no effect: none of this rule's actions is "
                     f"destructive ({', '.join(destructive)})")
    return bool(allow)


def _build_notify(raw: dict, problems: _Problems) -> tuple[str, ...] | None:
    if "notify" not in raw:
        return None
    value = raw["notify"]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.add("notify", "must be a list such as [slack] or []")
        return None
    for name in value:
        if name not in NOTIFIERS:
            problems.add("notify", f"unknown notifier {name!r} (known: {', '.join(NOTIFIERS)})")
    return tuple(v for v in value if v in NOTIFIERS)


def _optional_bool(raw: dict, key: str, default: bool | None, problems: _Problems) -> bool | None:
    value = raw.get(key, default)
    if value is not default and not isinstance(value, bool):
        problems.add(key, "must be true or false")
        return default
    return value


def _build_match(raw: Any, problems: _Problems) -> Match:
    if raw is None:
        problems.add("match", "required key is missing")
        return Match()
    if not isinstance(raw, dict) or not raw:
        problems.add("match", "must be a mapping with at least one criterion")
        return Match()
    for key in sorted(set(raw) - _MATCH_KEYS, key=str):
        problems.add(f"match.{key}", f"unknown criterion (known: {', '.join(sorted(_MATCH_KEYS))})")
    return Match(
        rules=_str_list(raw, "rules", problems),
        priority=_build_priority(raw.get("priority"), problems),
        tags=_str_list(raw, "tags", problems),
        source=_optional_str(raw, "source", problems),
        output_fields=_build_field_conditions(raw.get("output_fields"), problems),
    )


def _str_list(raw: dict, key: str, problems: _Problems) -> tuple[str, ...]:
    value = raw.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not _is_str_list(value) or (key == "rules" and key in raw and not value):
        problems.add(f"match.{key}", "must be a non-empty list of strings")
        return ()
    return tuple(value)


def _optional_str(raw: dict, key: str, problems: _Problems) -> str | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        problems.add(f"match.{key}", "must be a non-empty string")
        return None
    return "syscall" if value == "syscalls" else value


def _build_priority(raw: Any, problems: _Problems) -> PriorityCondition | None:
    if raw is None:
        return None
    found = _PRIORITY_EXPR.match(raw) if isinstance(raw, str) else None
    try:
        if not found:
            raise ValueError("expected a priority name with an optional >=, <=, >, <, == or !=")
        return PriorityCondition(found.group(1) or "==", Priority.parse(found.group(2)))
    except ValueError as exc:
        problems.add("match.priority", f"bad priority expression {raw!r}: {exc}")
        return None


def _build_field_conditions(raw: Any, problems: _Problems) -> tuple[FieldCondition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        problems.add("match.output_fields", "must be a mapping of field name to value(s)")
        return ()
    conditions = []
    for key, expected in raw.items():
        where = f"match.output_fields.{key}"
        negated = isinstance(expected, dict)
        if negated:
            if set(expected) != {"not"}:
                problems.add(where, "a mapping here may only hold 'not'")
                continue
            expected = expected["not"]
        values = expected if isinstance(expected, list) else [expected]
        if not values or not all(_is_scalar(v) for v in values):
            problems.add(where, "must be a value, a list of values, or {not: [values]}")
            continue
        conditions.append(FieldCondition(str(key), tuple(_as_text(v) for v in values), negated))
    return tuple(conditions)


def _build_actions(raw: Any, registry: Registry, problems: _Problems) -> tuple[ActionSpec, ...]:
    if raw is None:
        problems.add("actions", "required key is missing")
        return ()
    if not isinstance(raw, list) or not raw:
        problems.add("actions", "must be a non-empty list")
        return ()
    specs = []
    for i, item in enumerate(raw, 1):
        where = f"actions[{i}]"
        if not isinstance(item, dict) or "action" not in item:
            problems.add(where, "must be a mapping with an 'action' key")
            continue
        for key in sorted(set(item) - _ACTION_KEYS, key=str):
            problems.add(f"{where}.{key}", "unknown key (known: action, params, on_failure)")
        on_failure = item.get("on_failure", "continue")
        if on_failure not in ON_FAILURE:
            problems.add(f"{where}.on_failure", "must be stop or continue")
        name, params = item["action"], item.get("params") or {}
        cls = registry.get(name) if isinstance(name, str) else None
        if cls is None:
            problems.add(f"{where}.action", f"unknown action {name!r} "
                         f"(known: {', '.join(registry.names())})")
            continue
        for key, reason in cls.param_problems(params):
            problems.add(f"{where}.{key}", reason)
        specs.append(ActionSpec(name, params if isinstance(params, dict) else {},
                                on_failure if on_failure in ON_FAILURE else "continue"))
    return tuple(specs)


def _check_unique_names(rules: list[TableRule], sink: list[str]) -> None:
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules, 1):
        if rule.name in seen and not rule.name.startswith("#"):
            sink.append(f"rule #{index} ({rule.name}): name: duplicate of rule #{seen[rule.name]}")
        seen.setdefault(rule.name, index)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)
