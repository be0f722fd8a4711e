"""capture-evidence against a pod of many containers, on the real kube-apiserver with a
kubelet serving logs: the bundle's logs stay within MAX_LOG_READS reads and
MAX_LOG_BYTES_TOTAL bytes (previous logs cut first, each cut one named in errors.json), and
the decision's reason names a few unreadable files, not all of them."""

from __future__ import annotations

import json

import pytest

from responder.actions import evidence as capture

from . import test_apiserver_evidence as evidence
from .apiserver import container_id
from .fakekubelet import FakeKubelet
from .netcat import FULL_CID
from .test_apiserver_evidence import CAPTURE, bundle_dir, read_json

pytestmark = pytest.mark.slow
respond = evidence.respond
CONTAINERS = [f"c{i}" for i in range(8)]


@pytest.fixture
def crowded(cluster):
    """Pod `web` with eight containers, each restarted once, on a node."""
    node = cluster.add_node("node-a").metadata.name
    pod = cluster.core.create_namespaced_pod(cluster.namespace, {
        "metadata": {"name": "web"},
        "spec": {"nodeName": node, "containers": [
            {"name": name, "image": "registry.example/app:1"} for name in CONTAINERS]}})
    pod = cluster.set_running(pod, (FULL_CID, *[container_id() for _ in CONTAINERS[1:]]))
    statuses = cluster.core.api_client.sanitize_for_serialization(pod.status.container_statuses)
    cluster.core.patch_namespaced_pod_status("web", cluster.namespace, {"status": {
        "containerStatuses": [{**s, "restartCount": 1} for s in statuses]}})
    return node


def kubelet_logs() -> dict[tuple[str, bool], bytes]:
    return {(name, previous): b"x" * 299 + b"\n" for name in CONTAINERS
            for previous in (False, True)}


def test_logs_stop_at_the_bundles_byte_budget_previous_ones_first(
        cluster, crowded, respond, tmp_path, monkeypatch):
    monkeypatch.setattr(capture, "MAX_LOG_BYTES_TOTAL", 2000)
    with FakeKubelet(tmp_path, kubelet_logs()) as kubelet:
        cluster.core.patch_node_status(crowded, kubelet.node_status())
        _, _, status = respond(CAPTURE % "{max_bytes: 300}", state_dir=str(tmp_path / "s"))
    (decision,) = status["decisions"]
    directory = bundle_dir(decision["details"])
    kept = sorted(p.name for p in (directory / "logs").iterdir())
    # Six whole logs (1800 bytes), the seventh cut to what is left; no previous one.
    assert kept == [f"c{i}.log" for i in range(7)]
    assert (directory / "logs/c6.log").read_bytes() == b"x" * 200
    asked = [(path.rsplit("/", 1)[1], query["limitBytes"]) for path, query in kubelet.requests]
    assert sorted(asked) == [(f"c{i}", "300") for i in range(6)] + [("c6", "200")]
    errors = read_json(directory, "errors.json")
    assert sorted(errors) == sorted(["logs/c7.log"] +
                                    [f"logs/c{i}.previous.log" for i in range(8)])
    assert all(reason.startswith("not read: a bundle keeps at most") for reason in
               errors.values())
    assert decision["outcome"] == "done"
    assert decision["reason"].endswith(" and 4 more unreadable (errors.json)")
    assert len(decision["details"]["unreadable"]) == 9


def test_logs_stop_at_the_bundles_read_budget(cluster, crowded, respond, tmp_path,
                                              monkeypatch):
    monkeypatch.setattr(capture, "MAX_LOG_READS", 10)
    with FakeKubelet(tmp_path, kubelet_logs()) as kubelet:
        cluster.core.patch_node_status(crowded, kubelet.node_status())
        _, _, status = respond(CAPTURE % "{}", state_dir=str(tmp_path / "s"))
    directory = bundle_dir(status["decisions"][0]["details"])
    assert len(kubelet.requests) == 10
    kept = sorted(p.name for p in (directory / "logs").iterdir())
    assert kept == sorted([f"c{i}.log" for i in range(8)] + ["c0.previous.log",
                                                             "c1.previous.log"])
    manifest = json.loads((directory / "manifest.json").read_bytes())
    assert sum(f["size"] for f in manifest["files"] if f["name"].startswith("logs/")) == 3000
