"""The s3:// evidence store, over real HTTP: moto's server mode on a local port as the S3
endpoint (RESPONDER_EVIDENCE_ENDPOINT_URL), boto3 unmodified, credentials from the standard
AWS variables; bundles captured from the real kube-apiserver verify object by object."""

from __future__ import annotations

import hashlib
import json
import uuid as uuids

import pytest

from .netcat import FULL_CID, netcat_event
from .test_capture_timeout import TABLE as CAPTURE_THEN_LABEL

pytestmark = pytest.mark.slow

TABLE = CAPTURE_THEN_LABEL % "{}"  # capture-evidence with its defaults, then a label
KEY_ID, SECRET = "AKIAEVIDENCETESTKEY1", "evidence-test-secret-key/do-not-log"


def responder_log(logs) -> str:
    """What the responder logged (botocore's own DEBUG records name the key id)."""
    return "\n".join(r.getMessage() for r in logs.records if r.name.startswith("responder"))


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 in server mode, on 127.0.0.1 and a free port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, tmp_path):
    """A boto3 client of the endpoint, with the credentials the responder also finds in the
    environment (the standard AWS way), and a new bucket."""
    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                        "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-creds")}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.bucket = f"evidence-{uuids.uuid4().hex[:12]}"
    client.create_bucket(Bucket=client.bucket)
    return client


@pytest.fixture
def respond(cluster, apiserver, make_app, make_table, s3_endpoint):
    """Pod `web` on a node; one netcat event posted to a queued app storing evidence at
    `url`, worked off; the app and the event's status."""
    node = cluster.add_node("node-a").metadata.name
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))

    def post(url: str):
        app = make_app(make_table(TABLE), api_client=apiserver.api_client(),
                       evidence_url=url, evidence_endpoint_url=s3_endpoint)
        reply = app.test_client().post("/", data=json.dumps(netcat_event(
            uuid="evt-s3", namespace=cluster.namespace)), content_type="application/json")
        assert reply.status_code == 202
        assert app.extensions["worker"].run_pending() == 1
        return app, app.test_client().get("/events/evt-s3").get_json()
    return post


def test_a_bundle_in_s3_verifies_object_by_object(cluster, s3, respond, logs):
    app, status = respond(f"s3://{s3.bucket}/captures/prod")
    capture, label = status["decisions"]
    assert (capture["outcome"], label["outcome"]) == ("done", "done")
    details = capture["details"]
    prefix = f"captures/prod/{details['key']}/"
    assert details["location"] == f"s3://{s3.bucket}/{prefix}"
    assert details["key"].startswith(f"evt-s3/{cluster.namespace}/web/")
    listed = s3.list_objects_v2(Bucket=s3.bucket)["Contents"]
    names = {o["Key"].removeprefix(prefix) for o in listed}
    assert all(o["Key"].startswith(prefix) for o in listed)
    manifest_bytes = s3.get_object(Bucket=s3.bucket, Key=prefix + "manifest.json")["Body"].read()
    assert details["digest"] == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    manifest = json.loads(manifest_bytes)
    assert names == {f["name"] for f in manifest["files"]} | {"manifest.json"}
    total = len(manifest_bytes)
    for entry in manifest["files"]:
        data = s3.get_object(Bucket=s3.bucket, Key=prefix + entry["name"])["Body"].read()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])
        total += len(data)
    assert (details["files"], details["bytes"]) == (len(names), total)
    pod = json.loads(s3.get_object(Bucket=s3.bucket, Key=prefix + "pod.json")["Body"].read())
    assert pod["metadata"]["name"] == "web"

    # GET /events/<uuid>/evidence reads manifest.json back from the bucket.
    (bundle,) = app.test_client().get("/events/evt-s3/evidence").get_json()["bundles"]
    assert (bundle["location"], bundle["digest"], bundle["verified"]) == (
        details["location"], details["digest"], True)
    assert bundle["files"][1:] == manifest["files"]
    assert SECRET not in responder_log(logs)


def test_a_missing_bucket_fails_the_capture_with_a_reason_and_no_secret(s3, respond, logs):
    _, status = respond("s3://no-such-evidence-bucket/captures")
    capture, label = status["decisions"]
    assert capture["outcome"] == "failed"
    assert capture["reason"].startswith(
        "S3 store s3://no-such-evidence-bucket/captures: cannot write ")
    assert "NoSuchBucket" in capture["reason"]
    # The default on_failure is continue: containment still ran.
    assert label["outcome"] == "done"
    for text in (json.dumps(status), responder_log(logs)):
        assert SECRET not in text and KEY_ID not in text


def test_an_s3_store_without_boto3_credentials_in_the_url_is_refused(make_app, make_table):
    from responder.errors import ConfigError
    from responder.settings import Settings

    with pytest.raises(ConfigError, match="^RESPONDER_EVIDENCE_URL: an s3:// URL names a "
                       "bucket, and no credentials"):
        Settings.of(evidence_url=f"s3://{KEY_ID}:{SECRET}@bucket/prefix")
