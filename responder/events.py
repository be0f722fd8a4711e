"""Falco events as received from Falcosidekick, Falco's http_output or CloudEvents."""

from __future__ import annotations

import hashlib
import json
import re
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from .errors import EventError

# Values Falco uses for "could not extract": current Falco sends null, older
# extractors the string "<NA>", some the empty string.
MISSING_VALUES = (None, "", "<NA>")
# A Falco event is 3 levels deep (event, output_fields, a list value); far deeper input
# would only make later json.dumps calls (logs, Slack, the journal) hit the recursion limit.
MAX_DEPTH = 100
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class Priority(IntEnum):
    """Falco's priorities, ordered so that a larger value is more severe."""

    DEBUG = 0
    INFORMATIONAL = 1
    NOTICE = 2
    WARNING = 3
    ERROR = 4
    CRITICAL = 5
    ALERT = 6
    EMERGENCY = 7

    @classmethod
    def parse(cls, text: Any) -> Priority:
        """Parse a priority name case-insensitively; accepts Falco's `info` alias."""
        if not isinstance(text, str):
            raise ValueError(f"priority must be a string, got {type(text).__name__}")
        name = text.strip().upper()
        if name == "INFO":
            name = "INFORMATIONAL"
        try:
            return cls[name]
        except KeyError:
            names = ", ".join(p.label for p in sorted(cls, reverse=True))
            raise ValueError(f"unknown priority {text!r} (expected one of {names})") from None

    @property
    def label(self) -> str:
        return self.name.capitalize()


@dataclass(frozen=True)
class Event:
    """One Falco alert. `output_fields` is a flat dict: keys are never split on dots."""

    uuid: str
    rule: str
    priority: Priority
    source: str
    output_fields: Mapping[str, Any]
    output: str = ""
    time: str | None = None
    tags: tuple[str, ...] = ()
    hostname: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def field(self, name: str) -> Any:
        """An output field's value, or None when absent or one of Falco's "missing" markers."""
        value = self.output_fields.get(name)
        if isinstance(value, str) and value in MISSING_VALUES:
            return None
        return value

    @property
    def is_internal(self) -> bool:
        """Falco's own messages and Falcosidekick's test event: accepted, never acted on."""
        return self.source == "internal" or self.rule.startswith("Falco internal:")


def parse_event(body: bytes, content_type: str = "application/json") -> Event:
    """Decode a request body into an Event; raises EventError naming the problem."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(f"body is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise EventError("body is empty; expected one Falco event as a JSON object")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = ""
        if content_type.startswith("text/plain"):
            hint = " (Falco sends text when json_output is false; set json_output: true)"
        raise EventError(f"body is not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}{hint}") from None
    except RecursionError:
        raise EventError(f"body is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # an integer longer than Python's digit limit (4300)
        raise EventError(f"body is not usable JSON: {str(exc).split(':')[0]}") from None
    _check_decoded(text, data)
    if content_type.startswith("application/cloudevents+json") and isinstance(data, dict):
        # CloudEvents structured mode wraps the Falco payload in `data`.
        data = data.get("data")
    return event_from_dict(data)


def _check_decoded(text: str, data: Any) -> None:
    """Refuse what decodes but breaks later: deep nesting (recursion in json.dumps, logs,
    Slack) and lone surrogate escapes such as "\\ud800" (not encodable as UTF-8, so not
    storable in the journal)."""
    # A document with fewer brackets than the limit cannot be nested deeper than it.
    if text.count("{") + text.count("[") > MAX_DEPTH and _depth_exceeds(data, MAX_DEPTH):
        raise EventError(f"body is nested more than {MAX_DEPTH} levels deep")
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise EventError("body has a lone UTF-16 surrogate escape (\\ud800-\\udfff): "
                             "strings must be valid Unicode") from None


def _depth_exceeds(data: Any, limit: int) -> bool:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > limit:
            return True
        stack.extend((item, depth + 1) for item in value)
    return False


def event_from_dict(data: Any) -> Event:
    """Validate a decoded JSON value as a Falco event."""
    if not isinstance(data, dict):
        raise EventError(f"event must be a JSON object, got {_json_type(data)}")
    # Falcosidekick (Go) matches keys case-insensitively, so "Rule" is accepted there too.
    top = {str(k).lower(): v for k, v in data.items()}
    rule = _required_string(top, "rule")
    priority = _required_priority(top)
    fields = top.get("output_fields")
    if "output_fields" not in top:
        raise EventError("event has no 'output_fields'")
    if not isinstance(fields, dict):
        raise EventError(f"'output_fields' must be an object, got {_json_type(fields)}")
    return Event(
        uuid=(_optional_string(top, "uuid") or "").strip() or content_id(data),
        rule=rule,
        priority=priority,
        source=_source(top, fields),
        output_fields=fields,
        output=_optional_string(top, "output") or "",
        time=_optional_string(top, "time"),
        tags=_tags(top),
        hostname=_optional_string(top, "hostname"),
        raw=data,
    )


def content_id(data: Mapping[str, Any]) -> str:
    """A stable id for an event without a Falcosidekick uuid: a hash of its content."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return str(uuidlib.UUID(bytes=digest[:16], version=5))


def _required_string(top: Mapping[str, Any], key: str) -> str:
    if key not in top:
        raise EventError(f"event has no '{key}'")
    value = top[key]
    if not isinstance(value, str) or not value.strip():
        raise EventError(f"'{key}' must be a non-empty string")
    return value


def _required_priority(top: Mapping[str, Any]) -> Priority:
    if "priority" not in top:
        raise EventError("event has no 'priority'")
    try:
        return Priority.parse(top["priority"])
    except ValueError as exc:
        raise EventError(f"'priority': {exc}") from None


def _optional_string(top: Mapping[str, Any], key: str) -> str | None:
    value = top.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventError(f"'{key}' must be a string, got {_json_type(value)}")
    return value


def _tags(top: Mapping[str, Any]) -> tuple[str, ...]:
    tags = top.get("tags")
    if tags is None:
        return ()
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise EventError("'tags' must be a list of strings")
    return tuple(tags)


def _source(top: Mapping[str, Any], fields: Mapping[str, Any]) -> str:
    source = _optional_string(top, "source")
    if source == "syscalls":
        # Falcosidekick fills an empty source with the plural form.
        return "syscall"
    if source:
        return source
    # Pre-0.31 Falco sends no source: k8s audit events are known by their fields.
    if any(k.startswith(("ka.", "jevt.")) for k in fields):
        return "k8s_audit"
    return "syscall"


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
