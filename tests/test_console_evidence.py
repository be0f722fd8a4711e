"""The console's alert page lists the evidence bundles read back from the store (lazily,
like the audit Events): where, digest, verified or not, each file; a manifest altered or
broken in the store is said so, on the page and at GET /events/<uuid>/evidence, never a 500."""

from __future__ import annotations

import pytest

from . import test_apiserver_evidence as evidence
from .test_apiserver_evidence import CAPTURE, bundle_dir

pytestmark = pytest.mark.slow
workload, respond = evidence.workload, evidence.respond


def test_the_alert_page_lists_the_bundle_and_says_when_it_no_longer_verifies(
        workload, respond, tmp_path):
    app, _, status = respond(CAPTURE % "{}", state_dir=str(tmp_path / "state"))
    details = status["decisions"][0]["details"]
    client = app.test_client()
    page = client.get("/ui/alerts/evt-1").get_data(as_text=True)
    assert 'data-src="/ui/alerts/evt-1/evidence"' in page
    listing = client.get("/ui/alerts/evt-1/evidence").get_data(as_text=True)
    assert details["digest"] in listing and details["location"] in listing
    assert ">verified<" in listing
    for name in ("manifest.json", "pod.json", "event.json", "decisions.json"):
        assert f"<td>{name}</td>" in listing
    (bundle_dir(details) / "manifest.json").write_bytes(b'{"files": []}')
    assert "manifest does not match the digest" in \
        client.get("/ui/alerts/evt-1/evidence").get_data(as_text=True)


def test_a_manifest_that_is_not_one_is_said_so_not_a_500(workload, respond, tmp_path):
    app, _, status = respond(CAPTURE % "{}", state_dir=str(tmp_path / "state"))
    (bundle_dir(status["decisions"][0]["details"]) / "manifest.json").write_bytes(b"\xff{")
    client = app.test_client()
    reply = client.get("/events/evt-1/evidence")
    assert reply.status_code == 200
    (bundle,) = reply.get_json()["bundles"]
    assert bundle["verified"] is False and "not a bundle manifest" in bundle["error"]
    listing = client.get("/ui/alerts/evt-1/evidence")
    assert listing.status_code == 200 and "not a bundle manifest" in listing.get_data(as_text=True)


def test_an_alert_without_capture_says_there_is_no_bundle(workload, respond, tmp_path):
    table = CAPTURE.replace("capture-evidence\n        params: %s",
                            "label-pod\n        params: {labels: {seen: \"yes\"}}")
    app, _, _ = respond(table, state_dir=str(tmp_path / "state"))
    listing = app.test_client().get("/ui/alerts/evt-1/evidence").get_data(as_text=True)
    assert 'id="evidence-none"' in listing
    assert app.test_client().get("/ui/alerts/nope/evidence").status_code == 404
