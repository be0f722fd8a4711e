"""One wiring function builds the parts for the web process and the worker process: the
worker runs without a web app, live actions always run behind guardrails, and the table's
limits travel with each plan."""

from __future__ import annotations

import gc
import json
import threading

import flask
import pytest

from responder.actions import Limit
from responder.app import create_app, shutdown
from responder.decisions import plan_response
from responder.events import event_from_dict
from responder.executor import Executor
from responder.guardrails import Guardrails
from responder.journal import EventStore
from responder.server import run_worker
from responder.settings import Settings
from responder.wiring import build_components, stop_components

from .netcat import netcat_event

TABLE = """
defaults: {dry_run: false, coalesce_seconds: %s, max_cordoned_nodes: %s}
rules:
  - name: cordon
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions: [{action: cordon-node}]
"""


@pytest.fixture
def worker_env(monkeypatch, tmp_path):
    """`responder work` beside intake-only servers, no cluster, Slack off."""
    for name, value in (("RESPONDER_STATE_DIR", str(tmp_path / "state")),
                        ("RESPONDER_KUBE_CONFIG", "none"), ("RESPONDER_INTAKE", "queue"),
                        ("RESPONDER_WORKER", "off")):
        monkeypatch.setenv(name, value)
    for name in ("RESPONDER_SLACK_WEBHOOK_URL", "RESPONDER_SLACK_TOKEN",
                 "RESPONDER_ACTIONS_FILE", "RESPONDER_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "state"


def test_the_worker_process_acts_on_spooled_events_without_building_a_web_app(
        worker_env, monkeypatch):
    app = create_app(Settings.from_env(), start_worker=False)
    reply = app.test_client().post("/", data=json.dumps(netcat_event("u-spooled")),
                                   content_type="application/json")
    assert reply.status_code == 202
    shutdown(app)

    def no_flask(*args, **kwargs):
        raise AssertionError("the worker process built a Flask app")
    monkeypatch.setattr(flask.Flask, "__init__", no_flask)
    stop = threading.Event()
    stop.set()  # stop at once: the drain still acts on what the intake spooled
    try:
        assert run_worker(0, stop) == 0
    finally:
        gc.unfreeze()
    store = EventStore(worker_env)
    try:
        status = store.status("u-spooled")
    finally:
        store.close()
    assert status["state"] == "done"
    outcomes = {d["outcome"] for d in status["decisions"]}
    assert outcomes == {"would-run"}  # no cluster configured


def test_a_live_responder_always_has_guardrails(kube, tmp_path, make_table):
    table = make_table(TABLE % (30, 1))
    with kube.api_client() as api_client:
        parts = build_components(Settings.of(state_dir=str(tmp_path), namespace="falco-responder",
                                          pod_name="responder-0"),
                                 table=table, api_client=api_client, slack=None)
        try:
            guardrails = parts.responder.executor.guardrails
            assert isinstance(guardrails, Guardrails)
            assert guardrails.own_pod == ("falco-responder", "responder-0")
        finally:
            stop_components(parts, None)


def test_an_executor_with_live_actions_refuses_to_run_without_guardrails(kube, registry):
    with kube.api_client() as api_client, pytest.raises(ValueError, match="guardrails"):
        Executor(registry.instantiate(api_client, 5))


def test_each_plan_keeps_the_limits_of_the_table_it_was_made_from(make_table, registry):
    event = event_from_dict(netcat_event())
    before = plan_response(make_table(TABLE % (5, 2)), registry, event)
    after = plan_response(make_table(TABLE % (60, 3)), registry, event)
    cordon_cap = next(limit for action in registry for limit in action.limits
                      if limit.key == "max_cordoned_nodes")
    assert isinstance(cordon_cap, Limit)
    assert (before.limits.coalesce_seconds, before.limits.value(cordon_cap)) == (5, 2)
    assert (after.limits.coalesce_seconds, after.limits.value(cordon_cap)) == (60, 3)
