"""capture-evidence makes its reads after the pod's (owners, Events, node, logs) a few at a
time, and bounds them by `timeout_seconds`: a kubelet that hangs on one log costs the bundle
that log (errors.json says so), not the containment behind it. On the real kube-apiserver,
with the logs served through tests/fakekubelet.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from responder.actions.evidence import Deadline, read_all
from responder.errors import TableError
from responder.table import parse_table

from .apiserver import container_id
from .fakekubelet import FakeKubelet
from .netcat import FULL_CID, netcat_event

TABLE = """
defaults: {dry_run: false}
rules:
  - name: contain
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: capture-evidence
        params: %s
      - action: label-pod
        params: {labels: {quarantine: "true"}}
"""
LOGS = {("c0", False): b"2026-01-01T00:00:00Z c0 up\n",
        ("c1", False): b"2026-01-01T00:00:00Z c1 up\n"}


class HoldingKubelet(FakeKubelet):
    """A kubelet whose answers for the containers in `held` wait: for `gate` (a Barrier:
    until that many log requests are in flight at once), or for `release` (an Event)."""

    def __init__(self, directory: Path, held: set[str], gate: threading.Barrier | None = None,
                 release: threading.Event | None = None):
        super().__init__(directory, LOGS)
        self.held, self.gate, self.release = held, gate, release

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, bytes]:
        if path.rsplit("/", 1)[-1] in self.held:
            try:
                if self.gate is not None:
                    self.gate.wait()
                if self.release is not None:
                    self.release.wait(20)
            except threading.BrokenBarrierError:
                return 500, b"the other log request never came: the reads were one by one"
        return super().answer(path, query)


@pytest.fixture
def pod(cluster):
    """Pod `web`, owned by a ReplicaSet, with containers c0 (the event's) and c1, on a node
    of its own."""
    node = cluster.add_node("node-a").metadata.name
    cluster.add_pod("web", node, (FULL_CID, container_id()))
    return node


def respond(cluster, apiserver, make_app, make_table, tmp_path, params: str):
    """Post the netcat event to a queued app and work it off: (decisions, seconds taken)."""
    app = make_app(make_table(TABLE % params), api_client=apiserver.api_client(),
                   state_dir=str(tmp_path / "state"))
    reply = app.test_client().post("/", data=json.dumps(netcat_event(
        uuid="evt-1", namespace=cluster.namespace)), content_type="application/json")
    assert reply.status_code == 202, reply.get_json()
    started = time.monotonic()
    assert app.extensions["worker"].run_pending() == 1
    took = time.monotonic() - started
    return app.test_client().get("/events/evt-1").get_json()["decisions"], took


def wait_for_readers(seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while any(t.name.startswith("capture-evidence") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a capture's read never ended"
        time.sleep(0.05)


def bundle(decision: dict) -> Path:
    return Path(urlsplit(decision["details"]["location"]).path)


def read_json(directory: Path, name: str):
    return json.loads((directory / name).read_bytes())


@pytest.mark.slow
def test_the_logs_are_read_at_the_same_time(cluster, apiserver, make_app, make_table, pod,
                                           tmp_path):
    # Each log answer waits until both log requests are in flight: read one after the
    # other, the first would give up (500) after 5 s and so would the second.
    gate = threading.Barrier(2, timeout=5)
    with HoldingKubelet(tmp_path, {"c0", "c1"}, gate=gate) as kubelet:
        cluster.core.patch_node_status(pod, kubelet.node_status())
        decisions, _ = respond(cluster, apiserver, make_app, make_table, tmp_path,
                               "{timeout_seconds: 15}")
    capture, label = decisions
    assert (capture["outcome"], capture.get("reason")) == ("done", None)
    directory = bundle(capture)
    assert read_json(directory, "errors.json") == {}
    assert (directory / "logs/c0.log").read_bytes() == LOGS[("c0", False)]
    assert (directory / "logs/c1.log").read_bytes() == LOGS[("c1", False)]
    owners = read_json(directory, "owners.json")
    assert [(o["kind"], o["object"]["metadata"]["name"]) for o in owners] == [
        ("ReplicaSet", "web-owner")]
    assert read_json(directory, "node.json")["name"] == pod
    assert label["outcome"] == "done"


@pytest.mark.slow
def test_a_hanging_kubelet_is_cut_off_at_timeout_seconds_and_containment_goes_on(
        cluster, apiserver, make_app, make_table, pod, tmp_path):
    release = threading.Event()
    with HoldingKubelet(tmp_path, {"c1"}, release=release) as kubelet:
        try:
            cluster.core.patch_node_status(pod, kubelet.node_status())
            decisions, took = respond(cluster, apiserver, make_app, make_table, tmp_path,
                                      "{timeout_seconds: 1}")
        finally:
            release.set()
            # The read cut off goes on (urllib3 retries it) until the kubelet answers: let it
            # end here, not in the middle of a later test's audit log.
            wait_for_readers()
    capture, label = decisions
    # 1 s of reads, the pod read, the store, the label: far from the 20 s the kubelet holds.
    assert took < 6, took
    assert capture["outcome"] == "done"
    assert capture["reason"] == "partial bundle: logs/c1.log unreadable (errors.json)"
    assert capture["details"]["unreadable"] == ["logs/c1.log"]
    directory = bundle(capture)
    assert read_json(directory, "errors.json") == {
        "logs/c1.log": "not read within the capture's 1 s (timeout_seconds); containment "
                       "went on"}
    assert (directory / "logs/c0.log").read_bytes() == LOGS[("c0", False)]
    assert not (directory / "logs/c1.log").exists()
    assert read_json(directory, "owners.json")[0]["object"]["metadata"]["name"] == "web-owner"
    assert read_json(directory, "node.json")["name"] == pod
    assert label["outcome"] == "done"
    assert cluster.pod("web").metadata.labels["quarantine"] == "true"


@pytest.mark.parametrize("value", [0, 61, 2.5, "5", True])
def test_timeout_seconds_is_checked_at_load(value):
    text = TABLE % json.dumps({"timeout_seconds": value})
    with pytest.raises(TableError) as info:
        parse_table(text, "t.yaml", _registry())
    (problem,) = info.value.problems
    assert problem.startswith("rule #1 (contain): actions[1].params.timeout_seconds"), problem


def test_read_all_keeps_each_reads_value_and_names_the_late_and_the_broken():
    release = threading.Event()
    reads = {"a.json": lambda: ({"a": 1}, {}),
             "b.json": lambda: (None, {"b.json": "HTTP 500: no"}),
             "c.json": lambda: release.wait(10) and (b"late", {}),
             "d.json": lambda: 1 / 0}
    errors: dict[str, str] = {}
    started = time.monotonic()
    try:
        found = read_all(reads, Deadline(1, 10.0), errors)
    finally:
        release.set()
    assert time.monotonic() - started < 3
    assert found == {"a.json": {"a": 1}, "b.json": None, "d.json": None}
    assert errors == {
        "b.json": "HTTP 500: no",
        "c.json": "not read within the capture's 1 s (timeout_seconds); containment went on",
        "d.json": "ZeroDivisionError: division by zero"}


def test_no_request_outlives_the_deadline_by_more_than_its_floor():
    deadline = Deadline(1, 10.0)
    assert 0.9 < deadline.request() <= 1.0
    assert Deadline(30, 10.0).request() == 10.0  # the per-request timeout still bounds each
    deadline.at = time.monotonic() - 1
    assert deadline.request() == 0.05


def _registry():
    from responder.actions import default_registry

    return default_registry()
