"""Parsing Falco events: every shape the contract lists, and every kind of bad input."""

import json

import pytest

from responder.errors import EventError
from responder.events import Event, Priority, content_id, event_from_dict, parse_event

from .conftest import recorded_events

BASE = {"rule": "Terminal shell in container", "priority": "Notice",
        "output_fields": {"k8s.pod.name": "web", "k8s.ns.name": "shop"}}


def body(**changes) -> bytes:
    return json.dumps({**BASE, **changes}).encode()


@pytest.mark.parametrize("event", recorded_events(), ids=lambda e: e["rule"])
def test_every_recorded_event_parses(event):
    parsed = event_from_dict(event)
    assert parsed.rule == event["rule"]
    assert parsed.priority.label.lower() == event["priority"].lower()


def test_sidekick_body_with_trailing_newline_and_charset_is_accepted():
    event = parse_event(body(uuid="abc") + b"\n", "application/json; charset=utf-8")
    assert event.uuid == "abc"


def test_priority_is_case_insensitive_and_accepts_info():
    assert parse_event(body(priority="WARNING")).priority is Priority.WARNING
    assert parse_event(body(priority="info")).priority is Priority.INFORMATIONAL


def test_priority_order_follows_falco():
    assert Priority.EMERGENCY > Priority.ALERT > Priority.CRITICAL > Priority.ERROR
    assert Priority.ERROR > Priority.WARNING > Priority.NOTICE > Priority.INFORMATIONAL
    assert Priority.INFORMATIONAL > Priority.DEBUG


def test_go_style_capitalised_keys_are_accepted():
    event = parse_event(json.dumps({"Rule": "x", "Priority": "Debug",
                                    "Output_Fields": {}}).encode())
    assert event.rule == "x"


def test_missing_uuid_gets_a_stable_content_hash():
    first, second = parse_event(body()), parse_event(body())
    assert first.uuid == second.uuid == content_id(json.loads(body()))
    assert parse_event(body(output="other")).uuid != first.uuid


@pytest.mark.parametrize("value", [None, "", "<NA>"])
def test_missing_markers_read_as_none(value):
    event = parse_event(body(output_fields={"k8s.pod.name": value}))
    assert event.field("k8s.pod.name") is None


def test_output_field_keys_are_never_split_on_dots():
    event = parse_event(body(output_fields={"proc.aname[2]": "bash", "ka.uri.param[command]": 1}))
    assert event.field("proc.aname[2]") == "bash"
    assert event.field("ka.uri.param[command]") == 1


@pytest.mark.parametrize(("given", "expected"), [
    ({"source": "syscall"}, "syscall"),
    ({"source": "syscalls"}, "syscall"),  # Falcosidekick's default
    ({}, "syscall"),
    ({"output_fields": {"ka.target.name": "p"}}, "k8s_audit"),
    ({"output_fields": {"jevt.time": "15:59:47"}}, "k8s_audit"),
    ({"source": "aws_cloudtrail"}, "aws_cloudtrail"),
])
def test_source_is_normalised_or_inferred(given, expected):
    assert parse_event(body(**given)).source == expected


def test_internal_and_test_events_are_marked_internal():
    assert parse_event(body(rule="Test rule", source="internal")).is_internal
    assert parse_event(body(rule="Falco internal: syscall event drop")).is_internal
    assert not parse_event(body()).is_internal


def test_big_integers_survive():
    event = parse_event(body(output_fields={"proc.exe_ino": 18446744073670260079}))
    assert event.field("proc.exe_ino") == 18446744073670260079


def test_cloudevents_structured_mode_unwraps_data():
    wrapped = json.dumps({"specversion": "1.0", "data": json.loads(body())}).encode()
    assert parse_event(wrapped, "application/cloudevents+json").rule == BASE["rule"]


@pytest.mark.parametrize(("raw", "content_type", "message"), [
    (b"", "application/json", "body is empty"),
    (b"{not json", "application/json", "not valid JSON"),
    (b"12:00:00.000: Notice shell", "text/plain", "json_output: true"),
    (b"\xff\xfe", "application/json", "not valid UTF-8"),
    (b"[1, 2]", "application/json", "must be a JSON object, got array"),
    (b"null", "application/json", "got null"),
    (json.dumps({"priority": "Notice", "output_fields": {}}).encode(), "", "no 'rule'"),
    (json.dumps({"rule": "", "priority": "Notice", "output_fields": {}}).encode(), "",
     "'rule' must be a non-empty string"),
    (json.dumps({"rule": "r", "output_fields": {}}).encode(), "", "no 'priority'"),
    (json.dumps({"rule": "r", "priority": "Loud", "output_fields": {}}).encode(), "",
     "unknown priority 'Loud'"),
    (json.dumps({"rule": "r", "priority": 3, "output_fields": {}}).encode(), "",
     "priority must be a string"),
    (json.dumps({"rule": "r", "priority": "Notice"}).encode(), "", "no 'output_fields'"),
    (json.dumps({"rule": "r", "priority": "Notice", "output_fields": []}).encode(), "",
     "'output_fields' must be an object"),
    (body(tags="container"), "", "'tags' must be a list of strings"),
    (body(hostname=7), "", "'hostname' must be a string"),
])
def test_bad_bodies_raise_event_error_naming_the_problem(raw, content_type, message):
    with pytest.raises(EventError, match=message.replace("(", r"\(").replace("'", "'")):
        parse_event(raw, content_type)


def test_event_repr_does_not_dump_the_raw_body():
    event = parse_event(body(output="secret-ish output"))
    assert isinstance(event, Event)
    assert "raw" not in repr(event)
