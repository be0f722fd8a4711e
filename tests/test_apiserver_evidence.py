"""capture-evidence against a real kube-apiserver, into the file store: every file verifies
against manifest.json and the digest; env values are redacted and valueFrom kept; the owner
chain goes ReplicaSet -> Deployment; logs the apiserver cannot fetch (no kubelet) are
recorded, not fatal; a failing store fails the action and `on_failure: stop` holds
containment back; the digest shows in the journal, `GET /events/<uuid>/evidence`, the audit
Event and Slack."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from responder.notify import SlackConfig

from .apiserver import container_id
from .fakekubelet import FakeKubelet
from .netcat import CID, FULL_CID, netcat_event
from .slackserver import SlackServer

pytestmark = pytest.mark.slow

CAPTURE = """
defaults: {dry_run: false}
rules:
  - name: contain
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: capture-evidence
        params: %s
"""
STOP_OR_CONTINUE = """
defaults: {dry_run: false}
rules:
  - name: contain
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: capture-evidence
        on_failure: %s
      - action: label-pod
        params: {labels: {quarantine: "true"}}
"""
SECRET = "hunter2-do-not-keep"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
ENV = [{"name": "DB_PASSWORD", "value": SECRET},
       {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "api", "key": "key"}}}]
FILES = {"event.json", "decisions.json", "pod.json", "owners.json", "events.json", "node.json",
         "errors.json", "manifest.json"}


def template(labels: dict) -> dict:
    return {"metadata": {"labels": labels}, "spec": {"containers": [
        {"name": "c0", "image": "registry.example/app:1", "env": ENV},
        {"name": "c1", "image": "registry.example/sidecar:1"}]}}


@pytest.fixture
def workload(cluster):
    """Deployment `web` -> ReplicaSet `web-5d4f` -> pod `web` (no controller manager: the
    chain is made by hand, as the controllers would), env values in every template, c1
    restarted once; on a Ready node."""
    node = cluster.add_node("node-a").metadata.name
    labels = {"app": "web"}
    spec = {"replicas": 1, "selector": {"matchLabels": labels}, "template": template(labels)}
    deployment = cluster.apps.create_namespaced_deployment(cluster.namespace, {
        "metadata": {"name": "web", "annotations": {LAST_APPLIED: json.dumps(
            {"kind": "Deployment", "spec": {"template": template(labels)}})}}, "spec": spec})
    rs = cluster.apps.create_namespaced_replica_set(cluster.namespace, {
        "metadata": {"name": "web-5d4f", "ownerReferences": [_owner(deployment, "Deployment")]},
        "spec": spec})
    pod = cluster.core.create_namespaced_pod(cluster.namespace, {
        "metadata": {"name": "web", "labels": labels,
                     "ownerReferences": [_owner(rs, "ReplicaSet")]},
        "spec": {"nodeName": node, **template(labels)["spec"]}})
    pod = cluster.set_running(pod, (FULL_CID, container_id()))
    cluster.core.patch_namespaced_pod_status("web", cluster.namespace, {"status": {
        "containerStatuses": [{**s, "restartCount": 1 if s["name"] == "c1" else 0}
                              for s in cluster.core.api_client.sanitize_for_serialization(
                                  pod.status.container_statuses)]}})
    return {"deployment": deployment, "rs": rs, "pod": pod, "node": node}


def _owner(obj, kind: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": kind, "name": obj.metadata.name,
            "uid": obj.metadata.uid, "controller": True, "blockOwnerDeletion": True}


@pytest.fixture
def respond(cluster, apiserver, make_app, make_table):
    """Post one netcat event about pod `web` to a queued app and work it off; the app and
    the event's status (`GET /events/<uuid>`)."""
    def post(table: str, uuid: str = "evt-1", **settings):
        app = make_app(make_table(table), api_client=apiserver.api_client(), **settings)
        event = netcat_event(uuid=uuid, namespace=cluster.namespace)
        token = settings.get("auth_token")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        reply = app.test_client().post("/", data=json.dumps(event), headers=headers,
                                       content_type="application/json")
        assert reply.status_code == 202, reply.get_json()
        assert app.extensions["worker"].run_pending() == 1
        status = app.test_client().get(f"/events/{uuid}", headers=headers).get_json()
        return app, event, status
    return post


def bundle_dir(details: dict) -> Path:
    location = urlsplit(details["location"])
    assert location.scheme == "file"
    return Path(location.path)


def read_json(directory: Path, name: str):
    return json.loads((directory / name).read_bytes())


def test_every_file_verifies_against_manifest_json_and_the_digest(cluster, workload, respond,
                                                                  tmp_path):
    app, event, status = respond(CAPTURE % "{}", state_dir=str(tmp_path / "state"))
    (decision,) = status["decisions"]
    assert (decision["action"], decision["outcome"]) == ("capture-evidence", "done")
    details = decision["details"]
    directory = bundle_dir(details)
    # Under the state directory by default, one segment per part of the key.
    assert directory.is_relative_to(tmp_path / "state" / "evidence" / "evt-1" /
                                    cluster.namespace / "web")
    manifest_bytes = (directory / "manifest.json").read_bytes()
    assert details["digest"] == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    manifest = json.loads(manifest_bytes)
    stored = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    assert stored == {f["name"] for f in manifest["files"]} | {"manifest.json"}
    assert stored >= FILES
    for entry in manifest["files"]:
        data = (directory / entry["name"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])
    assert details["files"] == len(stored)
    assert details["bytes"] == sum((directory / name).stat().st_size for name in stored)
    assert (manifest["event_uuid"], manifest["namespace"], manifest["pod"], manifest["pod_uid"],
            manifest["node"]) == ("evt-1", cluster.namespace, "web",
                                  workload["pod"].metadata.uid, workload["node"])
    # The Falco event as received; nothing was decided before the capture.
    assert read_json(directory, "event.json") == event
    assert read_json(directory, "decisions.json") == []
    # No half-written bundle is left beside it.
    assert [p.name for p in directory.parent.iterdir()] == [directory.name]


def test_env_values_are_redacted_and_value_from_references_kept(workload, respond, tmp_path):
    _, _, status = respond(CAPTURE % "{}", state_dir=str(tmp_path / "state"))
    directory = bundle_dir(status["decisions"][0]["details"])
    raw = b"".join(p.read_bytes() for p in directory.rglob("*.json"))
    assert SECRET.encode() not in raw
    pod = read_json(directory, "pod.json")
    assert pod["spec"]["containers"][0]["env"] == [
        {"name": "DB_PASSWORD", "value": "[redacted]"},
        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "api", "key": "key"}}}]
    (rs, deployment) = read_json(directory, "owners.json")
    for owner in (rs, deployment):
        env = owner["object"]["spec"]["template"]["spec"]["containers"][0]["env"]
        assert env[0] == {"name": "DB_PASSWORD", "value": "[redacted]"}
        assert env[1]["valueFrom"] == {"secretKeyRef": {"name": "api", "key": "key"}}
    applied = json.loads(deployment["object"]["metadata"]["annotations"][LAST_APPLIED])
    assert applied["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == \
        "[redacted]"


def test_redact_env_false_keeps_the_values(workload, respond, tmp_path):
    _, _, status = respond(CAPTURE % "{redact_env: false}", state_dir=str(tmp_path / "state"))
    directory = bundle_dir(status["decisions"][0]["details"])
    assert read_json(directory, "pod.json")["spec"]["containers"][0]["env"] == ENV
    assert read_json(directory, "manifest.json")["params"]["redact_env"] is False


def test_the_owner_chain_runs_from_the_replicaset_up_to_its_deployment(workload, respond,
                                                                       tmp_path):
    _, _, status = respond(CAPTURE % "{}", state_dir=str(tmp_path / "state"))
    directory = bundle_dir(status["decisions"][0]["details"])
    chain = read_json(directory, "owners.json")
    assert [(o["kind"], o["name"], o["uid"], o["object"]["metadata"]["uid"]) for o in chain] == [
        ("ReplicaSet", "web-5d4f", workload["rs"].metadata.uid, workload["rs"].metadata.uid),
        ("Deployment", "web", workload["deployment"].metadata.uid,
         workload["deployment"].metadata.uid)]


def test_node_conditions_and_the_pods_events_are_kept(cluster, workload, respond, tmp_path):
    cluster.core.create_namespaced_event(cluster.namespace, {
        "metadata": {"name": "web.probe"}, "reason": "Unhealthy", "type": "Warning",
        "message": "Liveness probe failed", "involvedObject": {
            "kind": "Pod", "name": "web", "namespace": cluster.namespace,
            "uid": workload["pod"].metadata.uid}})
    cluster.core.create_namespaced_event(cluster.namespace, {
        "metadata": {"name": "other.probe"}, "reason": "Unhealthy", "message": "not ours",
        "involvedObject": {"kind": "Pod", "name": "other", "namespace": cluster.namespace,
                           "uid": "00000000-0000-4000-8000-000000000000"}})
    _, _, status = respond(CAPTURE % "{}", state_dir=str(tmp_path / "state"))
    directory = bundle_dir(status["decisions"][0]["details"])
    assert [(e["reason"], e["message"]) for e in read_json(directory, "events.json")] == [
        ("Unhealthy", "Liveness probe failed")]
    node = read_json(directory, "node.json")
    assert node["name"] == workload["node"]
    assert [(c["type"], c["status"]) for c in node["conditions"]] == [("Ready", "True")]


def test_logs_the_apiserver_cannot_fetch_are_recorded_and_the_capture_still_done(
        workload, respond, tmp_path):
    # No kubelet behind this apiserver: every log request fails. The previous log is asked
    # for only where a container restarted (c1).
    _, _, status = respond(CAPTURE % "{tail_lines: 50, max_bytes: 4096}",
                           state_dir=str(tmp_path / "state"))
    (decision,) = status["decisions"]
    unreadable = ["logs/c0.log", "logs/c1.log", "logs/c1.previous.log"]
    assert decision["outcome"] == "done"
    assert decision["reason"] == f"partial bundle: {', '.join(unreadable)} unreadable " \
        "(errors.json)"
    assert decision["details"]["unreadable"] == unreadable
    directory = bundle_dir(decision["details"])
    errors = read_json(directory, "errors.json")
    assert sorted(errors) == unreadable
    assert all(reason.startswith("HTTP ") and "403" not in reason for reason in errors.values())
    assert not (directory / "logs").exists()
    assert read_json(directory, "manifest.json")["params"] == {
        "tail_lines": 50, "max_bytes": 4096, "redact_env": True}


def test_the_decisions_so_far_are_recorded(workload, respond, tmp_path):
    table = """
defaults: {dry_run: false}
rules:
  - name: contain
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true"}}
      - action: capture-evidence
"""
    _, _, status = respond(table, state_dir=str(tmp_path / "state"))
    label, capture = status["decisions"]
    recorded = read_json(bundle_dir(capture["details"]), "decisions.json")
    # The report as the journal has it (its slot is the journal's own bookkeeping).
    assert recorded == [{k: v for k, v in label.items() if k != "slot"}]
    assert recorded[0]["details"]["set"] == {"quarantine": "true"}
    assert read_json(bundle_dir(capture["details"]), "pod.json")["metadata"]["labels"][
        "quarantine"] == "true"


@pytest.fixture
def broken_store(tmp_path) -> str:
    """An evidence URL whose directory cannot be made: a file stands where it would go."""
    (tmp_path / "blocker").write_text("not a directory")
    return (tmp_path / "blocker" / "evidence").as_uri()


@pytest.mark.parametrize(("on_failure", "label"), [
    ("stop", ("skipped", "capture-evidence failed earlier in table rule contain "
                         "(on_failure: stop)")),
    ("continue", ("done", None))])
def test_a_failing_store_fails_the_capture_and_on_failure_decides_the_rest(
        cluster, workload, respond, broken_store, tmp_path, on_failure, label):
    _, _, status = respond(STOP_OR_CONTINUE % on_failure, evidence_url=broken_store,
                           state_dir=str(tmp_path / "state"))
    capture, labelled = status["decisions"]
    blocker = Path(urlsplit(broken_store).path).parent
    assert (capture["outcome"], capture["reason"]) == (
        "failed", f"file store {blocker / 'evidence'}: cannot write the bundle: Not a directory")
    assert "details" not in capture
    assert (labelled["outcome"], labelled.get("reason")) == label
    assert ("quarantine" in cluster.pod("web").metadata.labels) == (on_failure == "continue")
    assert status["state"] == "failed"


def test_get_evidence_lists_the_bundle_read_back_from_the_store(workload, respond, tmp_path):
    app, _, status = respond(CAPTURE % "{}", state_dir=str(tmp_path / "state"),
                             auth_token="s3cret-token")
    details = status["decisions"][0]["details"]
    # Behind the same token as /events/<uuid>.
    client = app.test_client()
    assert client.get("/events/evt-1/evidence").status_code == 401
    headers = {"Authorization": "Bearer s3cret-token"}
    reply = client.get("/events/evt-1/evidence", headers=headers)
    assert reply.status_code == 200
    (bundle,) = reply.get_json()["bundles"]
    directory = bundle_dir(details)
    manifest = read_json(directory, "manifest.json")
    assert bundle == {
        "location": details["location"], "digest": details["digest"], "verified": True,
        "captured_at": manifest["captured_at"],
        "files": [{"name": "manifest.json",
                   "size": (directory / "manifest.json").stat().st_size}, *manifest["files"]],
        "bytes": details["bytes"]}
    # A bundle altered in the store no longer verifies.
    (directory / "manifest.json").write_bytes(b'{"files": []}')
    (bundle,) = client.get("/events/evt-1/evidence", headers=headers).get_json()["bundles"]
    assert bundle["verified"] is False


def test_get_evidence_is_404_for_unknown_events_and_events_without_a_bundle(
        workload, respond, tmp_path):
    table = """
defaults: {dry_run: false}
rules:
  - name: mark
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions: [{action: label-pod, params: {labels: {quarantine: "true"}}}]
"""
    app, _, _ = respond(table, state_dir=str(tmp_path / "state"))
    client = app.test_client()
    for uuid, said in (("evt-1", "event evt-1 has no evidence bundle"),
                       ("nope", "event nope unknown (never received, or past retention)")):
        reply = client.get(f"/events/{uuid}/evidence")
        assert (reply.status_code, reply.get_json()) == (404, {"error": said})


def test_the_digest_is_in_the_audit_event_and_the_slack_message(cluster, workload, respond,
                                                                tmp_path):
    with SlackServer() as slack:
        config = SlackConfig(webhook_url=slack.webhook_url, timeout=2.0)
        _, _, status = respond(CAPTURE % "{}", state_dir=str(tmp_path / "state"), slack=config)
        digest = status["decisions"][0]["details"]["digest"]
        deadline = time.monotonic() + 10
        while not slack.state.bodies() and time.monotonic() < deadline:
            time.sleep(0.05)
        (body,) = slack.state.bodies()
    assert digest in json.dumps(body)
    (event,) = [e for e in cluster.events() if e.reason == "FalcoResponse"]
    assert (event.action, event.involved_object.kind, event.involved_object.uid) == (
        "capture-evidence", "Pod", workload["pod"].metadata.uid)
    assert "capture-evidence done (partial bundle: " in event.message
    assert f"; digest {digest}; Falco event evt-1" in event.message


def test_a_pod_gone_before_the_capture_is_skipped(cluster, respond, tmp_path):
    node = cluster.add_node("node-a").metadata.name
    cluster.add_pod("other", node=node, container_ids=(CID + "ef" * 26,))
    _, _, status = respond(CAPTURE % "{}", state_dir=str(tmp_path / "state"))
    (decision,) = status["decisions"]
    assert (decision["outcome"], decision["reason"]) == ("skipped", "pod no longer exists")
    assert not (tmp_path / "state" / "evidence").exists()


def test_a_forged_container_id_captures_nothing(cluster, apiserver, workload, make_app,
                                                make_table, tmp_path):
    app = make_app(make_table(CAPTURE % "{}"), api_client=apiserver.api_client(),
                   state_dir=str(tmp_path / "state"), intake="inline")
    event = netcat_event(namespace=cluster.namespace, **{"container.id": "fedcba987654"})
    reply = app.test_client().post("/", data=json.dumps(event), content_type="application/json")
    assert [(d["outcome"], d["reason"]) for d in reply.get_json()["decisions"]] == [
        ("skipped", "container not in pod (container.id fedcba987654 is not one of its own)")]
    assert not (tmp_path / "state" / "evidence").exists()


def test_logs_fetched_through_the_kubelet_are_kept_bounded_by_tail_lines_and_max_bytes(
        cluster, workload, respond, tmp_path):
    current = b"".join(b"2024-05-01T10:00:%02dZ line %d\n" % (i % 60, i) for i in range(200))
    with FakeKubelet(tmp_path, {("c0", False): current, ("c1", False): b"sidecar up\n",
                                ("c1", True): b"sidecar crashed: segfault\n"}) as kubelet:
        cluster.core.patch_node_status(workload["node"], kubelet.node_status())
        _, _, status = respond(CAPTURE % "{tail_lines: 50, max_bytes: 600}",
                               state_dir=str(tmp_path / "state"))
    (decision,) = status["decisions"]
    assert (decision["outcome"], decision.get("reason")) == ("done", None)
    directory = bundle_dir(decision["details"])
    # The last 50 lines, cut at 600 bytes.
    assert (directory / "logs/c0.log").read_bytes() == b"".join(
        current.splitlines(keepends=True)[-50:])[:600]
    assert (directory / "logs/c1.log").read_bytes() == b"sidecar up\n"
    assert (directory / "logs/c1.previous.log").read_bytes() == b"sidecar crashed: segfault\n"
    assert read_json(directory, "errors.json") == {}
    asked = sorted((path.rsplit("/", 1)[1], query.get("previous", "false"), query["tailLines"],
                    query["limitBytes"], query["timestamps"]) for path, query in kubelet.requests)
    assert asked == [("c0", "false", "50", "600", "true"), ("c1", "false", "50", "600", "true"),
                     ("c1", "true", "50", "600", "true")]


def test_the_owner_chain_of_a_job_pod_runs_up_to_its_cronjob(cluster, respond, tmp_path):
    from kubernetes import client as k8s

    batch = k8s.BatchV1Api(cluster.core.api_client)
    node = cluster.add_node("node-a").metadata.name
    pod_template = {"spec": {"restartPolicy": "Never", "containers": [
        {"name": "c0", "image": "registry.example/job:1"}]}}
    cron = batch.create_namespaced_cron_job(cluster.namespace, {
        "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": pod_template}}}})
    job = batch.create_namespaced_job(cluster.namespace, {
        "metadata": {"name": "nightly-2890", "ownerReferences": [{
            "apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly",
            "uid": cron.metadata.uid, "controller": True}]},
        "spec": {"template": pod_template}})
    pod = cluster.core.create_namespaced_pod(cluster.namespace, {
        "metadata": {"name": "web", "ownerReferences": [{
            "apiVersion": "batch/v1", "kind": "Job", "name": job.metadata.name,
            "uid": job.metadata.uid, "controller": True}]},
        "spec": {"nodeName": node, **pod_template["spec"]}})
    cluster.set_running(pod, (FULL_CID,))
    _, _, status = respond(CAPTURE % "{}", state_dir=str(tmp_path / "state"))
    chain = read_json(bundle_dir(status["decisions"][0]["details"]), "owners.json")
    assert [(o["kind"], o["name"], o["object"]["metadata"]["uid"]) for o in chain] == [
        ("Job", "nightly-2890", job.metadata.uid), ("CronJob", "nightly", cron.metadata.uid)]


@pytest.mark.parametrize(("owner", "note"), [
    ({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "web",
      "uid": "11111111-1111-4111-8111-111111111111"}, "kind not followed by capture-evidence"),
    ({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-owner",
      "uid": "22222222-2222-4222-8222-222222222222"},
     "the object of this name has another uid (replaced)")])
def test_owners_not_followed_are_named_with_why(cluster, respond, tmp_path, owner, note):
    node = cluster.add_node("node-a").metadata.name
    cluster.add_owner("ReplicaSet", "web-owner", {"app": "web"})  # another uid than `owner`
    pod = cluster.core.create_namespaced_pod(cluster.namespace, {
        "metadata": {"name": "web", "ownerReferences": [{**owner, "controller": True}]},
        "spec": {"nodeName": node, "containers": [{"name": "c0", "image": "app:1"}]}})
    cluster.set_running(pod, (FULL_CID,))
    _, _, status = respond(CAPTURE % "{}", state_dir=str(tmp_path / "state"))
    chain = read_json(bundle_dir(status["decisions"][0]["details"]), "owners.json")
    assert chain == [{**owner, "note": note}]
