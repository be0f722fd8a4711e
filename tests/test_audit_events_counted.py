"""Audit Events are best effort, but never lost quietly: each one is counted as recorded,
failed or dropped (responder_audit_events_total), and a dropped one is logged with what it
was about."""

from __future__ import annotations

import logging
import re

import pytest

from responder.app import shutdown

from .test_audit_queue import LABEL_TABLE, add_pods, post_alerts


def audit_counts(app) -> dict[str, float]:
    text = app.extensions["responder"].metrics.exposition().decode()
    return {outcome: float(value) for outcome, value in
            re.findall(r'responder_audit_events_total\{outcome="(\w+)"\} (\S+)', text)}


def test_recorded_and_failed_events_are_counted(kube, make_app, make_table):
    pods = add_pods(kube, 3)
    kube.api.fail("POST", "/api/v1/namespaces/shop/events", 403, "events is forbidden")
    app = make_app(make_table(LABEL_TABLE), api_client=kube.api_client())
    post_alerts(app, pods)
    assert app.extensions["worker"].run_pending() == 3
    shutdown(app)
    assert audit_counts(app) == {"recorded": 2.0, "failed": 1.0}


@pytest.mark.slow  # the budget's first token, then a second of waiting before the drop
def test_events_still_queued_at_shutdown_are_dropped_counted_and_named(kube, make_app,
                                                                       make_table, logs,
                                                                       monkeypatch):
    # One Event a second, one at once: by the time the 1 s shutdown gives up, at most two
    # of the six are recorded; the others were owed and are given up.
    pods = add_pods(kube, 6)
    app = make_app(make_table(LABEL_TABLE), api_client=kube.api_client(), audit_qps=1,
                   audit_burst=1)
    # The app's log set-up stops propagation; caplog listens at the root.
    monkeypatch.setattr(logging.getLogger("responder"), "propagate", True)
    post_alerts(app, pods)
    assert app.extensions["worker"].run_pending() == 6
    shutdown(app, timeout=1)
    counts = audit_counts(app)
    assert counts["dropped"] >= 3 and counts.get("recorded", 0) >= 1
    assert counts["dropped"] + counts["recorded"] == 6
    dropped = [r.getMessage() for r in logs.records if "audit Event dropped" in r.getMessage()]
    assert len(dropped) == counts["dropped"]
    assert all(r.levelno == logging.ERROR for r in logs.records
               if "audit Event dropped" in r.getMessage())
    # Each line says which action on which pod, for whom to look up in the decision log.
    named = {re.search(r"Pod shop/(web-\d)", line).group(1) for line in dropped}
    assert len(named) == counts["dropped"] and named <= set(pods)
    assert all("label-pod" in line and "uuid=u-web-" in line for line in dropped)


def test_a_full_queue_counts_each_event_it_drops():
    from responder.actions import Outcome
    from responder.auditqueue import AuditQueue

    from .test_audit_queue import SlowRecorder, event, report

    counted: list[str] = []
    audit = AuditQueue(SlowRecorder(0.3), capacity=1, count=counted.append)
    queued = [audit.record_all(event(f"u-{i}"), [report(Outcome.DONE)] * 2) for i in range(4)]
    audit.close(5)
    assert queued.count(0) >= 1
    assert counted == ["dropped"] * (2 * queued.count(0))
