"""Reading a bundle's manifest.json back from a store someone else can write: nested
100,000 deep, sizes of 1e999, gigabytes long, not an object; the listing says so, in both
stores (moto's S3 over HTTP for s3://), and never raises or reads without bound."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from responder.evidence import MANIFEST
from responder.evidencestore import MAX_MANIFEST_BYTES, FileStore, S3Store, bundle_listing

from .test_evidence_s3 import s3, s3_endpoint  # noqa: F401 - fixtures

HOSTILE = {
    "nested": b"[" * 100_000,
    "infinite-size": b'{"files": [{"name": "a", "size": 1e999, "sha256": "x"}]}',
    "huge-size": b'{"files": [{"name": "a", "size": "' + b"9" * 5000 + b'", "sha256": "x"}]}',
    "not-an-object": b'"files"',
    "files-not-a-list": b'{"files": {"a": 1}}',
}


def listing(store, key: str, body: bytes) -> dict:
    location = store.put(key, {MANIFEST: body})
    return bundle_listing(store, {"key": key, "location": location, "digest": "sha256:0"})


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_manifest_in_the_file_store_is_said_so(tmp_path, kind):
    found = listing(FileStore(tmp_path), f"u/ns/{kind}/t", HOSTILE[kind])
    assert found["verified"] is False
    assert found["error"] == f"{MANIFEST} in the store is not a bundle manifest"
    assert "files" not in found


def test_a_manifest_longer_than_the_bound_is_not_read_whole(tmp_path, monkeypatch):
    store = FileStore(tmp_path)
    location = store.put("u/ns/pod/t", {MANIFEST: b"{}"})
    (tmp_path / "u/ns/pod/t" / MANIFEST).unlink()
    (tmp_path / "u/ns/pod/t" / MANIFEST).symlink_to("/dev/zero")  # endless
    read = []
    original = FileStore.read
    monkeypatch.setattr(FileStore, "read", lambda self, *a: read.append(
        original(self, *a)) or read[-1])
    found = bundle_listing(store, {"key": "u/ns/pod/t", "location": location,
                                   "digest": "sha256:0"})
    assert found["verified"] is False and "larger than" in found["error"]
    assert len(read[0]) == MAX_MANIFEST_BYTES + 1


def test_captured_at_that_is_not_text_is_left_out(tmp_path):
    found = listing(FileStore(tmp_path), "u/ns/pod/t",
                    b'{"captured_at": {"a": 1}, "files": []}')
    assert found["captured_at"] is None and found["files"] == [
        {"name": MANIFEST, "size": 38}]


@pytest.mark.slow
def test_hostile_manifests_in_the_s3_store_are_said_so(s3, s3_endpoint):  # noqa: F811
    store = S3Store(s3.bucket, "evidence", s3_endpoint)
    for kind, body in HOSTILE.items():
        found = listing(store, f"u/ns/{kind}/t", body)
        assert found["error"] == f"{MANIFEST} in the store is not a bundle manifest", kind
    found = listing(store, "u/ns/long/t", b" " * (MAX_MANIFEST_BYTES + 10) + b"{}")
    assert found["verified"] is False and "larger than" in found["error"]


@pytest.fixture
def silent_endpoint(monkeypatch, tmp_path):
    """An S3 endpoint that takes connections and never answers, with credentials in the
    environment the standard AWS way."""
    for name, value in {"AWS_ACCESS_KEY_ID": "AKIASILENTTESTKEY01", "AWS_SECRET_ACCESS_KEY":
                        "silent-secret", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)
    listener = socket.create_server(("127.0.0.1", 0))
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    listener.close()


@pytest.mark.slow
def test_a_store_that_does_not_answer_holds_a_reader_seconds_not_minutes(silent_endpoint):
    """The listing is read while a request thread (one the intake shares) waits."""
    store = S3Store("evidence-bucket", "p", silent_endpoint)
    started = time.monotonic()
    found = bundle_listing(store, {"key": "u/ns/pod/t", "digest": "sha256:0",
                                   "location": store.location("u/ns/pod/t")})
    assert time.monotonic() - started < 8
    assert "cannot read manifest.json" in found["error"] and "timeout" in found["error"]
    assert "silent-secret" not in found["error"]
