"""Evidence without a cluster: safe names, env redaction, the manifest and its digest, the
file store (atomic, no way out of its root), the settings, `on_failure` in the table, and
the digest in the audit Event message and the Slack message."""

from __future__ import annotations

import hashlib
import json
import textwrap

import pytest

from responder.actions import Outcome, Result, Target, default_registry
from responder.audit import audit_message
from responder.decisions import Decision, plan_response
from responder.errors import ConfigError, TableError
from responder.events import event_from_dict
from responder.evidence import MANIFEST, REDACTED, build_bundle, redact_env, safe_name
from responder.evidencestore import (
    EvidenceStoreError,
    FileStore,
    bundle_key,
    bundle_listing,
    open_store,
)
from responder.executor import ActionReport
from responder.notify.message import build_slack_message
from responder.settings import Settings
from responder.table import parse_table

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("name", ["web-7d9f", "api.v2", "evt_1", "0abc"])
def test_plain_names_are_kept_as_they_are(name):
    assert safe_name(name) == name


@pytest.mark.parametrize("name", ["..", ".", "../../etc", "a/b", "", "-x", "a..b", "x" * 101,
                                  "\u00e9t\u00e9", "a\x00b"])
def test_any_other_name_becomes_one_safe_segment_unique_to_it(name):
    safe = safe_name(name)
    assert "/" not in safe and ".." not in safe and safe[0].isalnum() and len(safe) <= 80
    assert safe != safe_name(name + "!")


def test_bundle_keys_from_hostile_event_names_stay_four_segments():
    key = bundle_key("../../../etc", "..", "a/../../b")
    parts = key.split("/")
    assert len(parts) == 4 and not {".", ".."} & set(parts)


def test_env_values_are_redacted_everywhere_and_value_from_is_kept():
    pod = {"metadata": {"annotations": {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(
            {"spec": {"containers": [{"env": [{"name": "A", "value": "secret"}]}]}}),
        "other": "kept"}},
        "spec": {"containers": [{"name": "c", "env": [
            {"name": "A", "value": "secret"},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}],
            "initContainers": [{"name": "i", "env": [{"name": "C", "value": ""}]}]}}
    redacted = redact_env(pod)
    assert redacted["spec"]["containers"][0]["env"] == [
        {"name": "A", "value": REDACTED},
        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    assert redacted["spec"]["initContainers"][0]["env"] == [{"name": "C", "value": REDACTED}]
    annotations = redacted["metadata"]["annotations"]
    assert "secret" not in annotations["kubectl.kubernetes.io/last-applied-configuration"]
    assert annotations["other"] == "kept"
    assert pod["spec"]["containers"][0]["env"][0]["value"] == "secret"  # a copy


def test_an_unparsable_last_applied_annotation_is_dropped_whole():
    key = "kubectl.kubernetes.io/last-applied-configuration"
    redacted = redact_env({"metadata": {"annotations": {key: "not json secret"}}})
    assert redacted["metadata"]["annotations"][key] == REDACTED


def test_the_manifest_lists_every_file_and_its_digest_is_the_bundles():
    bundle = build_bundle({"b.json": b"{}\n", "logs/c.log": b"line\n"}, {"pod": "web"})
    manifest_bytes = bundle.files[MANIFEST]
    assert bundle.digest == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    assert bundle.manifest == {"format": 1, "pod": "web", "files": [
        {"name": "b.json", "sha256": hashlib.sha256(b"{}\n").hexdigest(), "size": 3},
        {"name": "logs/c.log", "sha256": hashlib.sha256(b"line\n").hexdigest(), "size": 5}]}
    assert bundle.total_bytes == 8 + len(manifest_bytes)
    with pytest.raises(ValueError):
        build_bundle({MANIFEST: b""}, {})


def test_the_file_store_writes_a_whole_bundle_and_reads_it_back(tmp_path):
    store = FileStore(tmp_path / "evidence")
    bundle = build_bundle({"a.json": b"1\n"}, {})
    location = store.put("u/ns/pod/t1", bundle.files)
    assert location == (tmp_path / "evidence" / "u/ns/pod/t1").as_uri() + "/"
    assert store.read("u/ns/pod/t1", MANIFEST) == bundle.files[MANIFEST]
    assert [p.name for p in (tmp_path / "evidence/u/ns/pod").iterdir()] == ["t1"]
    listing = bundle_listing(store, {"key": "u/ns/pod/t1", "location": location,
                                     "digest": bundle.digest})
    assert listing["verified"] is True and listing["bytes"] == bundle.total_bytes


@pytest.mark.parametrize("key", ["../outside", "a/../../outside", "/etc/x", "."])
def test_the_file_store_refuses_paths_outside_its_root(tmp_path, key):
    store = FileStore(tmp_path / "evidence")
    with pytest.raises(EvidenceStoreError, match="outside the store"):
        store.put(key, {"a": b""})
    assert not (tmp_path / "outside").exists()


def test_a_file_store_that_cannot_write_leaves_nothing_half_written(tmp_path):
    store = FileStore(tmp_path / "evidence")
    store.put("u/ns/pod/t1", {"a": b"1"})
    with pytest.raises(EvidenceStoreError, match="cannot write the bundle: Directory not empty"):
        store.put("u/ns/pod/t1", {"a": b"2"})
    assert sorted(p.name for p in (tmp_path / "evidence/u/ns/pod").iterdir()) == ["t1"]
    assert store.read("u/ns/pod/t1", "a") == b"1"


def test_the_default_store_is_evidence_under_the_state_dir(tmp_path):
    store = open_store(None, None, tmp_path)
    assert isinstance(store, FileStore) and store.root == tmp_path / "evidence"
    assert open_store("file:///var/lib/ev", None, tmp_path).root.as_posix() == "/var/lib/ev"


@pytest.mark.parametrize(("values", "message"), [
    ({"evidence_url": "ftp://host/x"}, "RESPONDER_EVIDENCE_URL: must start with file:// or s3://"),
    ({"evidence_url": "file://relative/dir"}, "RESPONDER_EVIDENCE_URL: a file:// URL names an "
     "absolute directory"),
    ({"evidence_url": "s3://AKIA:sec/ret@bucket/p"}, "RESPONDER_EVIDENCE_URL: an s3:// URL "
     "names a bucket, and no credentials"),
    ({"evidence_endpoint_url": "minio:9000"}, "RESPONDER_EVIDENCE_ENDPOINT_URL: must be an "
     "http:// or https:// URL"),
    ({"evidence_endpoint_url": "https://key:secret@minio:9000"},
     "RESPONDER_EVIDENCE_ENDPOINT_URL: must hold no credentials"),
])
def test_bad_evidence_settings_are_config_errors_naming_the_setting(values, message):
    with pytest.raises(ConfigError) as info:
        Settings.of(**values)
    assert str(info.value).startswith(message)
    assert "sec/ret" not in str(info.value) and "secret" not in str(info.value)


def test_good_evidence_settings_are_kept():
    storage = Settings.of(evidence_url="s3://my-bucket/prod/evidence",
                          evidence_endpoint_url="https://minio.example:9000").storage
    assert (storage.evidence_url, storage.evidence_endpoint_url) == (
        "s3://my-bucket/prod/evidence", "https://minio.example:9000")


# --- on_failure in the table -------------------------------------------------------------

def rule_with(actions_yaml: str) -> str:
    return textwrap.dedent("""
        rules:
          - name: contain
            match: {rules: [x]}
            actions:
        """) + textwrap.indent(textwrap.dedent(actions_yaml), "      ")


def test_on_failure_is_validated_with_file_rule_and_key():
    with pytest.raises(TableError) as info:
        parse_table(rule_with("""
            - action: capture-evidence
              on_failure: halt
            - action: label-pod
              params: {labels: {a: b}}
              on_fail: stop
            """), "t.yaml", default_registry())
    assert info.value.problems == [
        "rule #1 (contain): actions[1].on_failure: must be stop or continue",
        "rule #1 (contain): actions[2].on_fail: unknown key (known: action, params, "
        "on_failure)"]
    assert "t.yaml: rule #1 (contain): actions[1].on_failure" in str(info.value)


def test_on_failure_stop_reaches_the_decision_and_continue_is_the_default():
    registry = default_registry()
    table = parse_table(rule_with("""
        - action: capture-evidence
          on_failure: stop
        - action: isolate-pod
        """), "t.yaml", registry)
    event = event_from_dict({"rule": "x", "priority": "Warning",
                             "output_fields": {"k8s.ns.name": "a", "k8s.pod.name": "b"}})
    decisions = plan_response(table, registry, event).decisions
    assert [(d.action, d.stop_on_failure) for d in decisions] == [
        ("capture-evidence", True), ("isolate-pod", False)]


@pytest.mark.parametrize("text", ["""
    - action: capture-evidence
      params: {tail_lines: 0}
    """, """
    - action: capture-evidence
      params: {max_bytes: 17000000, redact_env: "no", since: 5}
    """])
def test_capture_params_are_checked_at_load(text):
    with pytest.raises(TableError) as info:
        parse_table(rule_with(text), "t.yaml", default_registry())
    for problem in info.value.problems:
        assert problem.startswith("rule #1 (contain): actions[1].params.")


# --- the digest on record ----------------------------------------------------------------

def capture_report(result: Result) -> ActionReport:
    decision = Decision("contain", "capture-evidence", {}, Target("shop", "web"),
                        ("namespace", "pod"), False)
    return ActionReport(decision, Target("shop", "web"), result)


def netcat():
    return event_from_dict({"uuid": "u-1", "rule": "Netcat Remote Code Execution in Container",
                            "priority": "Warning", "output_fields": {
                                "k8s.ns.name": "shop", "k8s.pod.name": "web"}})


def test_the_audit_message_carries_the_digest():
    report = capture_report(Result(Outcome.DONE, details={"digest": DIGEST, "location": "x"}))
    assert audit_message(netcat(), report) == (
        "Falco rule 'Netcat Remote Code Execution in Container' matched table rule 'contain': "
        f"capture-evidence done; digest {DIGEST}; Falco event u-1")


def test_the_slack_message_carries_the_digest_and_the_location():
    location = "s3://bucket/evidence/u-1/shop/web/20240501T100000Z-0a1b2c3d/"
    report = capture_report(Result(Outcome.DONE, details={"digest": DIGEST,
                                                          "location": location}))
    message = build_slack_message(netcat(), [report], ("contain",))
    (response,) = [b["text"]["text"] for b in message["attachments"][0]["blocks"]
                   if b.get("text", {}).get("text", "").startswith("*Response*")]
    assert response == (f"*Response*\n• `capture-evidence` (contain): done · digest `{DIGEST}` "
                        f"at {location}")


def test_reports_without_a_digest_read_as_before():
    report = capture_report(Result(Outcome.FAILED, "file store /x: cannot write the bundle"))
    assert "digest" not in json.dumps(build_slack_message(netcat(), [report], ("contain",)))
    assert "digest" not in audit_message(netcat(), report)
