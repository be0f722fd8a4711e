"""Faults: the Kubernetes API down, erring or refusing; the worker killed mid-queue; Slack down.
Nothing is lost, nothing is done twice, and a failure is recorded with the API's message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from responder.notify import SlackConfig

from .netcat import FULL_CID, delete_pod_table, netcat_event
from .serving import free_port
from .slackserver import SlackServer

# Each fault takes seconds to play out (outages, retries, a killed worker).
pytestmark = pytest.mark.slow

FINISHED = ("done", "failed")


def pod_path(pod: str) -> str:
    return f"/api/v1/namespaces/shop/pods/{pod}"


def add_pods(kube, count: int) -> list[str]:
    kube.api.add_node("node-a")
    kube.api.add_node("node-b")
    pods = [f"web-{i}" for i in range(count)]
    for pod in pods:
        kube.api.add_pod("shop", pod, node="node-a", container_ids=(FULL_CID,))
    return pods


def requests_to(kube, method: str, pod: str) -> list[int | None]:
    """The statuses the API answered to `method` requests on one pod, in order."""
    return [c.status for c in kube.api.calls if c.method == method and c.path == pod_path(pod)]


def post_events(test_client, pods: list[str], prefix: str = "u") -> list[str]:
    uuids = []
    for pod in pods:
        reply = test_client.post("/", data=json.dumps(netcat_event(f"{prefix}-{pod}", pod)),
                                 content_type="application/json")
        assert reply.status_code == 202 and reply.get_json()["status"] == "queued"
        uuids.append(reply.get_json()["uuid"])
    return uuids


def wait_finished(status: Callable[[str], dict], uuids: list[str], timeout: float,
                  step: Callable[[], object] = lambda: None) -> dict[str, dict]:
    """Every event's status once all are done or failed; `step` runs between looks."""
    deadline = time.monotonic() + timeout
    while True:
        step()
        found = {uuid: status(uuid) for uuid in uuids}
        if all(s["state"] in FINISHED for s in found.values()):
            return found
        if time.monotonic() > deadline:
            unfinished = {u: s for u, s in found.items() if s["state"] not in FINISHED}
            pytest.fail(f"{len(unfinished)} event(s) unfinished: {list(unfinished.items())[:3]}")
        time.sleep(0.1)


def app_status(app) -> Callable[[str], dict]:
    test_client = app.test_client()
    return lambda uuid: test_client.get(f"/events/{uuid}").get_json()


def outcome(status: dict) -> tuple[str, str | None]:
    (decision,) = status["decisions"]
    return decision["outcome"], decision.get("reason")


def metric(app, line_start: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(line_start + " ")]
    return values[0] if values else 0.0


@pytest.fixture
def table(make_table):
    return make_table(delete_pod_table())


# --- the Kubernetes API down, then back -----------------------------------------------------
def test_api_down_for_10_seconds_loses_nothing_and_acts_once_it_is_back(kube, table, make_app):
    pods = add_pods(kube, 5)
    app = make_app(table, api_client=kube.api_client(), start_worker=True,
                   namespace="falco-responder")
    kube.stop()  # connections refused from now on
    down_since = time.monotonic()
    uuids = post_events(app.test_client(), pods)  # the intake never needs the API
    status = app_status(app)

    time.sleep(max(0.0, 10.0 - (time.monotonic() - down_since)))
    during = [status(u) for u in uuids]
    # The worker kept trying: every event is back in the queue with the reason, none given up.
    assert {s["state"] for s in during} <= {"pending", "running"}
    assert all(s["attempts"] >= 1 for s in during)
    assert any("cannot reach the Kubernetes API" in (s["error"] or "") for s in during)
    assert metric(app, "responder_event_retries_total") >= len(uuids)
    assert kube.api.calls == []

    kube.start()  # the same port, the same cluster state
    found = wait_finished(status, uuids, timeout=40)
    assert {outcome(s) for s in found.values()} == {("done", None)}
    for pod in pods:
        assert requests_to(kube, "DELETE", pod) == [200], pod  # each pod once, none missing
    assert kube.api.pods == {}


# --- errors from the API --------------------------------------------------------------------
def test_500s_and_429s_are_retried_until_done_with_bounded_requests(kube, table, make_app):
    add_pods(kube, 3)
    # More 500s than one call's tries (4): the event goes back to the queue once.
    kube.api.fail("DELETE", pod_path("web-0"), 500, "etcdserver: leader changed", times=5)
    # 429 with Retry-After: waited out inside the call.
    kube.api.fail("DELETE", pod_path("web-1"), 429, "storage is (re)initializing", times=2,
                  headers={"Retry-After": "1"})
    kube.api.fail("GET", pod_path("web-2"), 503, "the server is currently unable", times=1)
    app = make_app(table, api_client=kube.api_client(), namespace="falco-responder")
    uuids = post_events(app.test_client(), ["web-0", "web-1", "web-2"])

    started = time.monotonic()
    found = wait_finished(app_status(app), uuids, timeout=20,
                          step=app.extensions["worker"].run_pending)
    assert {outcome(s) for s in found.values()} == {("done", None)}
    assert time.monotonic() - started >= 2.0  # two Retry-After: 1 waited out
    assert requests_to(kube, "DELETE", "web-0") == [500] * 5 + [200]
    assert found["u-web-0"]["attempts"] == 2
    assert requests_to(kube, "DELETE", "web-1") == [429, 429, 200]
    assert found["u-web-1"]["attempts"] == 1
    assert requests_to(kube, "GET", "web-2") == [503, 200]
    assert requests_to(kube, "DELETE", "web-2") == [200]
    assert metric(app, "responder_event_retries_total") == 1


def test_500s_that_never_stop_fail_after_max_attempts_with_the_api_message(kube, table,
                                                                         make_app):
    add_pods(kube, 1)
    kube.api.fail("DELETE", pod_path("web-0"), 500, "etcdserver: request timed out", times=100)
    app = make_app(table, api_client=kube.api_client(), namespace="falco-responder",
                   max_attempts=2)
    uuids = post_events(app.test_client(), ["web-0"])

    found = wait_finished(app_status(app), uuids, timeout=20,
                          step=app.extensions["worker"].run_pending)
    assert found["u-web-0"]["state"] == "failed"
    assert found["u-web-0"]["attempts"] == 2
    assert outcome(found["u-web-0"]) == ("failed", "HTTP 500: etcdserver: request timed out")
    assert requests_to(kube, "DELETE", "web-0") == [500] * 8  # 2 attempts of 4 tries


def test_retries_do_not_use_up_the_pod_deletion_limit(kube, make_table, make_app):
    pods = add_pods(kube, 3)
    for pod in pods:  # every DELETE of the first attempt fails; the second attempt succeeds
        kube.api.fail("DELETE", pod_path(pod), 503, "etcd leader election", times=4)
    table = make_table(delete_pod_table(3))
    app = make_app(table, api_client=kube.api_client(), namespace="falco-responder")
    uuids = post_events(app.test_client(), pods)

    found = wait_finished(app_status(app), uuids, timeout=20,
                          step=app.extensions["worker"].run_pending)
    # Three pods deleted, each tried twice: three deletions, within a limit of three.
    assert {outcome(s) for s in found.values()} == {("done", None)}
    assert all(requests_to(kube, "DELETE", pod) == [503] * 4 + [200] for pod in pods)


def test_403_is_a_permanent_failure_recorded_with_the_api_message(kube, table, make_app):
    add_pods(kube, 1)
    message = ('pods "web-0" is forbidden: User "system:serviceaccount:falco-responder:'
               'falco-responder" cannot delete resource "pods" in API group "" in the '
               'namespace "shop"')
    kube.api.fail("DELETE", pod_path("web-0"), 403, message, times=100)
    app = make_app(table, api_client=kube.api_client(), namespace="falco-responder")
    (uuid,) = post_events(app.test_client(), ["web-0"])
    worker = app.extensions["worker"]

    assert worker.run_pending() == 1
    status = app_status(app)(uuid)
    assert (status["state"], status["attempts"]) == ("failed", 1)
    assert outcome(status) == ("failed", f"HTTP 403: {message}")
    assert worker.run_pending() == 0  # not back in the queue
    assert requests_to(kube, "DELETE", "web-0") == [403]
    assert metric(app, "responder_event_retries_total") == 0


# --- the worker dies mid-queue ---------------------------------------------------------------
def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
    return path


@contextmanager
def responder_process(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`responder serve` (gunicorn master and worker) in its own process group, so a test
    can SIGKILL all of it at once; yields the process and its URL once /healthz answers."""
    port = free_port()
    full_env = {**os.environ, "RESPONDER_HOST": "127.0.0.1", "RESPONDER_PORT": str(port), **env}
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "responder.cli", "serve"], env=full_env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not _answers(url + "/healthz"):
            assert proc.poll() is None, f"server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "server did not start in time"
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1).close()
        return True
    except requests.RequestException:
        return False


def remote_status(url: str) -> Callable[[str], dict]:
    return lambda uuid: requests.get(f"{url}/events/{uuid}", timeout=5).json()


def test_worker_killed_mid_queue_resumes_on_restart_without_acting_twice(kube, tmp_path):
    pods = add_pods(kube, 50)
    kube.api.delay = 0.04  # a slow API server, so the queue is still full at the kill
    table = tmp_path / "actions.yaml"
    table.write_text(delete_pod_table())
    env = {"RESPONDER_STATE_DIR": str(tmp_path / "state"), "RESPONDER_ACTIONS_FILE": str(table),
           "RESPONDER_KUBE_CONFIG": "kubeconfig",
           "KUBECONFIG": str(kubeconfig(tmp_path / "kubeconfig", kube.url)),
           "RESPONDER_NAMESPACE": "falco-responder", "RESPONDER_LEASE_SECONDS": "1",
           "RESPONDER_KUBE_QPS": "1000", "RESPONDER_KUBE_BURST": "1000"}
    log = tmp_path / "responder.log"
    events = [netcat_event(f"u-{pod}", pod) for pod in pods]

    with responder_process(env, log) as (proc, url):
        for event in events:
            reply = requests.post(url, json=event, timeout=5)
            assert reply.status_code == 202 and reply.json()["status"] == "queued"
        in_flight = kill_during_a_delete(proc, kube, after=10)
        assert in_flight, log.read_text()[-2000:]
    assert sum(c.method == "DELETE" for c in kube.api.calls) < len(pods) // 2

    with responder_process(env, log) as (_, url):
        found = wait_finished(remote_status(url), [e["uuid"] for e in events], timeout=40)
    assert {s["state"] for s in found.values()} == {"done"}, log.read_text()[-2000:]
    # The guarantee: an action whose outcome was recorded is never repeated; the one action
    # in flight at the kill (sent, its outcome not yet recorded) is sent once more after the
    # restart, and a repeated delete finds the pod gone (404, recorded as "already gone").
    # So every pod gets exactly one successful DELETE; only the pod whose DELETE was in
    # flight may get a second one, and that one is a 404.
    deletes = {pod: requests_to(kube, "DELETE", pod) for pod in pods}
    assert {pod: s for pod, s in deletes.items() if pod != in_flight} == {
        pod: [200] for pod in pods if pod != in_flight}
    assert deletes[in_flight] in ([200], [200, 404])
    if deletes[in_flight] == [200, 404]:
        assert outcome(found[f"u-{in_flight}"]) == ("already-done", "already gone")
    assert kube.api.pods == {}


def kill_during_a_delete(proc: subprocess.Popen, kube, after: int) -> str | None:
    """SIGKILL the server (master and worker: no shutdown hook runs) while its DELETE of a
    pod is in flight, once `after` DELETEs were sent; returns that pod."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        deletes = [c for c in kube.api.calls if c.method == "DELETE"]
        if len(deletes) >= after and deletes[-1].status is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return deletes[-1].path.rsplit("/", 1)[1]
        time.sleep(0.002)
    return None


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, and no handler catches it."""


def die_after(worker, events: int) -> None:
    """Make `worker` die once it has processed `events` of the batch it claimed."""
    real, done = worker.process, []

    def process(item, *rest):
        if len(done) == events:
            raise Killed
        real(item, *rest)
        done.append(item)
    worker.process = process


def test_events_a_dead_worker_claimed_but_never_began_are_still_coalesced(kube, table,
                                                                          make_app, tmp_path):
    add_pods(kube, 1)
    journal = str(tmp_path / "journal")
    first = make_app(table, api_client=kube.api_client(), namespace="falco-responder",
                     state_dir=journal, lease_seconds=0.3)
    uuids = [f"storm-{i}" for i in range(10)]
    for uuid in uuids:
        first.test_client().post("/", data=json.dumps(netcat_event(uuid, "web-0")),
                                 content_type="application/json")
    die_after(first.extensions["worker"], 1)
    with pytest.raises(Killed):
        # Claims all ten, acts on the first, dies before the second.
        first.extensions["worker"].run_pending()

    time.sleep(0.35)  # the dead worker's lease runs out
    second = make_app(table, api_client=kube.api_client(), namespace="falco-responder",
                      state_dir=journal, lease_seconds=0.3)
    assert second.extensions["worker"].run_pending() == 9
    found = {u: app_status(second)(u) for u in uuids}
    # Claimed twice, but the window knows storm-0 opened it: the others stay coalesced.
    assert {u: outcome(s)[0] for u, s in found.items()} == {
        "storm-0": "done", **{u: "coalesced" for u in uuids[1:]}}
    assert requests_to(kube, "DELETE", "web-0") == [200]
    assert [c.method for c in kube.api.calls if c.path == pod_path("web-0")] == ["GET", "DELETE"]


def test_a_retried_event_still_acts_while_later_ones_stay_coalesced(kube, table, make_app):
    add_pods(kube, 1)
    kube.api.fail("DELETE", pod_path("web-0"), 503, "etcd leader election", times=4)
    app = make_app(table, api_client=kube.api_client(), namespace="falco-responder")
    worker = app.extensions["worker"]
    (first,) = post_events(app.test_client(), ["web-0"], prefix="first")
    assert worker.run_pending() == 1  # opens the window, fails, goes back to the queue
    (later,) = post_events(app.test_client(), ["web-0"], prefix="later")

    found = wait_finished(app_status(app), [first, later], timeout=20, step=worker.run_pending)
    assert (outcome(found[first]), found[first]["attempts"]) == (("done", None), 2)
    assert outcome(found[later])[0] == "coalesced"
    assert requests_to(kube, "DELETE", "web-0") == [503] * 4 + [200]


def test_two_workers_on_one_journal_never_process_an_event_twice(kube, table, make_app,
                                                                 tmp_path):
    pods = add_pods(kube, 10)
    kube.api.delay = 0.05  # a batch outlives its lease: 10 events x 3 requests > 0.5 s
    journal = str(tmp_path / "journal")
    apps = [make_app(table, api_client=kube.api_client(), namespace="falco-responder",
                     state_dir=journal, lease_seconds=0.5, kube_qps=1000, kube_burst=1000)
            for _ in range(2)]  # two gunicorn workers of one replica
    uuids = post_events(apps[0].test_client(), pods)
    for app in apps:
        app.extensions["worker"].start()

    found = wait_finished(app_status(apps[0]), uuids, timeout=20)
    # Leases ran out and events were claimed again, but each was processed by one worker.
    assert {outcome(s) for s in found.values()} == {("done", None)}
    for pod in pods:
        assert requests_to(kube, "DELETE", pod) == [200], pod


# --- Slack down throughout ---------------------------------------------------------------
@pytest.mark.parametrize("failure", ["500", "refused"])
def test_slack_down_never_blocks_or_hides_an_action(kube, table, make_app, failure):
    pods = add_pods(kube, 3)
    with SlackServer() as slack:
        slack.state.fail(500, times=100)
        webhook = slack.webhook_url if failure == "500" else \
            f"http://127.0.0.1:{free_port()}/services/T000/B000/secret"
        app = make_app(table, api_client=kube.api_client(), namespace="falco-responder",
                       slack=SlackConfig(webhook_url=webhook, timeout=2))
        uuids = post_events(app.test_client(), pods)

        started = time.monotonic()
        assert app.extensions["worker"].run_pending() == 3
        assert time.monotonic() - started < 1.0  # Slack's retries happen elsewhere
        found = {u: app_status(app)(u) for u in uuids}
        assert {(s["state"], outcome(s)) for s in found.values()} == {("done", ("done", None))}
        assert all(requests_to(kube, "DELETE", pod) == [200] for pod in pods)

        assert app.extensions["responder"].notifier.flush(20)
        failed = 'responder_slack_notifications_total{outcome="failed"}'
        assert metric(app, failed) == 3
        assert metric(app, 'responder_slack_notifications_total{outcome="sent"}') == 0
        if failure == "500":
            assert {r.status for r in slack.state.requests} == {500}
