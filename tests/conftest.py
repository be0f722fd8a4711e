"""Shared fixtures: a real kube-apiserver (once per session), the fault-injecting stand-in,
tables, apps and recorded events."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from responder.actions import default_registry
from responder.app import create_app, shutdown
from responder.settings import Settings
from responder.table import parse_table

from .apiserver import kube_binary, new_cluster, session_server, start_controller_manager
from .kubeapi import KubeServer
from .redisserver import RedisServer

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def no_real_cluster(monkeypatch, tmp_path):
    """No test may reach a real cluster or read the developer's settings: fail loudly instead."""
    import os

    for name in list(os.environ):
        if name.startswith("RESPONDER_") or name.startswith("KUBERNETES_SERVICE"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture
def logs(caplog, monkeypatch):
    """caplog for the responder's records, which the app's log set-up otherwise keeps at
    its own handler."""
    monkeypatch.setattr(logging.getLogger("responder"), "propagate", True)
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture
def kube():
    with KubeServer() as server:
        yield server


@pytest.fixture
def registry():
    return default_registry()


@pytest.fixture
def make_table(registry):
    def make(text: str):
        return parse_table(text, "test-table.yaml", registry)
    return make


@pytest.fixture
def make_app(registry, tmp_path):
    """Apps with their journal in tmp_path, Slack off and the worker driven by the test."""
    apps = []

    def make(table, api_client=None, slack=None, start_worker=False, **settings):
        settings.setdefault("state_dir", str(tmp_path / f"state-{len(apps)}"))
        app = create_app(Settings.of(**settings), table=table, registry=registry,
                         api_client=api_client, slack=slack, start_worker=start_worker)
        apps.append(app)
        return app

    yield make
    for app in apps:
        shutdown(app)


def recorded_events() -> list[dict]:
    lines = (DATA / "recorded-events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory):
    """A real etcd + kube-apiserver for the whole session (see tests/apiserver.py)."""
    yield from session_server(tmp_path_factory.mktemp("apiserver"))


@pytest.fixture(scope="session")
def admin_api(apiserver):
    with apiserver.admin_client() as api:
        yield api


@pytest.fixture
def cluster(apiserver, admin_api, request):
    """The real apiserver, seen through a namespace of this test's own; the nodes the test
    adds are deleted afterwards."""
    view = new_cluster(apiserver, admin_api, request.node.name)
    yield view
    view.cleanup()


@pytest.fixture(scope="module")
def controller_manager(apiserver):
    """kube-controller-manager (ReplicaSets, garbage collector) on the session's apiserver,
    for one test module: other modules' ReplicaSets must not grow pods and Events."""
    daemon = start_controller_manager(apiserver, kube_binary("kube-controller-manager"))
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def redis_server():
    """A real redis-server per test module (skipped without one, failing under CI)."""
    with RedisServer() as server:
        yield server
