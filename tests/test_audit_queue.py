"""Audit Events leave the containment path in the queued worker: a response never waits for
the bookkeeping of the ones before it, nor for the audit budget; the Events still all come."""

from __future__ import annotations

import json
import logging
import time

import pytest

from responder.actions import Outcome, Result, Target
from responder.actions.pods import POD
from responder.auditqueue import AuditQueue
from responder.decisions import Decision
from responder.events import event_from_dict
from responder.executor import ActionReport

from .netcat import FULL_CID, netcat_event

LABEL_TABLE = """
defaults: {dry_run: false}
rules:
  - name: quarantine
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true"}}
"""


def post_alerts(app, pods: list[str]) -> None:
    client = app.test_client()
    for pod in pods:
        reply = client.post("/", data=json.dumps(netcat_event(f"u-{pod}", pod=pod)),
                            content_type="application/json")
        assert reply.status_code == 202


def add_pods(kube, count: int) -> list[str]:
    kube.api.add_node("node-a")
    pods = [f"web-{i}" for i in range(count)]
    for pod in pods:
        kube.api.add_pod("shop", pod, node="node-a", container_ids=(FULL_CID,))
    return pods


def event_posts(kube) -> int:
    return sum(c.method == "POST" and c.path.endswith("/events") for c in kube.api.calls)


@pytest.mark.slow  # the queued Events take their budget's seconds at shutdown
def test_containment_does_not_wait_for_the_audit_budget(kube, make_app, make_table):
    # Two audit Events a second, one at once: were Events on the containment path (or its
    # budget), the eighth pod would be labelled 3.5 s after the first, and all eight Events
    # would be there by then; half of that is far from both and from a loaded machine.
    pods = add_pods(kube, 8)
    app = make_app(make_table(LABEL_TABLE), api_client=kube.api_client(), audit_qps=2,
                   audit_burst=1)
    post_alerts(app, pods)
    started = time.monotonic()
    assert app.extensions["worker"].run_pending() == 8
    took = time.monotonic() - started
    labelled = [p for p in pods if kube.api.pods[("shop", p)]["metadata"]["labels"].get(
        "quarantine") == "true"]
    assert labelled == pods
    assert took < 1.75, f"containment took {took:.1f} s: it waited for audit tokens"
    assert event_posts(kube) < 8, "the Events were created on the containment path"


def test_every_audit_event_is_recorded_by_shutdown(kube, make_app, make_table):
    from responder.app import shutdown

    pods = add_pods(kube, 5)
    app = make_app(make_table(LABEL_TABLE), api_client=kube.api_client())
    post_alerts(app, pods)
    assert app.extensions["worker"].run_pending() == 5
    shutdown(app)
    posted = [c.body for c in kube.api.calls if c.method == "POST" and c.path.endswith("/events")]
    assert sorted(b["involvedObject"]["name"] for b in posted) == pods
    assert all(b["reason"] == "FalcoResponse" for b in posted)


def test_inline_intake_still_answers_after_the_event_is_recorded(kube, make_app, make_table):
    (pod,) = add_pods(kube, 1)
    app = make_app(make_table(LABEL_TABLE), api_client=kube.api_client(), intake="inline")
    reply = app.test_client().post("/", data=json.dumps(netcat_event("u-1", pod=pod)),
                                   content_type="application/json")
    assert reply.status_code == 200
    assert event_posts(kube) == 1


class SlowRecorder:
    """A recorder that takes its time and remembers what it was given."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.recorded: list[str] = []

    def record_all(self, event, reports) -> int:
        time.sleep(self.seconds)
        self.recorded.append(event.uuid)
        return len(reports)


def report(outcome: Outcome, dry_run: bool = False) -> ActionReport:
    target = Target("shop", "web", "node-a")
    decision = Decision("quarantine", "label-pod", {}, target, ("namespace", "pod"), dry_run,
                        acts_on=POD)
    return ActionReport(decision, target, Result(outcome))


def event(uuid: str):
    return event_from_dict(netcat_event(uuid))


def test_record_all_returns_at_once_and_queues_only_what_needs_an_event():
    recorder = SlowRecorder(1.0)  # a caller that waited for it would take a second
    audit = AuditQueue(recorder)
    started = time.monotonic()
    assert audit.record_all(event("u-1"), [report(Outcome.DONE),
                                           report(Outcome.DONE, dry_run=True),
                                           report(Outcome.SKIPPED)]) == 1
    assert audit.record_all(event("u-2"), [report(Outcome.WOULD_RUN)]) == 0
    assert time.monotonic() - started < 0.5
    audit.close(5)
    assert recorder.recorded == ["u-1"]


def test_a_full_queue_drops_the_event_and_says_so(logs):
    recorder = SlowRecorder(0.3)
    audit = AuditQueue(recorder, capacity=1)
    queued = [audit.record_all(event(f"u-{i}"), [report(Outcome.DONE)]) for i in range(4)]
    audit.close(5)
    assert queued.count(0) >= 1 and len(recorder.recorded) == sum(queued)
    dropped = [r for r in logs.records if "audit queue full" in r.getMessage()]
    assert dropped and all(r.levelno == logging.ERROR for r in dropped)
