"""A crash of the worker neither repeats nor drops audit records: one `event` record per
accepted event and one `decision` record per decision, and a dead worker's claims are
taken up as soon as a worker starts again, not a lease later."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import pytest
import requests

from .netcat import delete_pod_table, netcat_event
from .test_faults import (
    Killed,
    add_pods,
    app_status,
    die_after,
    kubeconfig,
    post_events,
    remote_status,
    requests_to,
    responder_process,
    wait_finished,
)
from .test_table_durability import queue_worker

DEAD_OWNER = "no-such-boot:1:1"  # a claim by a process of another boot: gone
# Two decisions per event: a dry-run one (its outcome is committed with the batch) and a
# live one (committed as soon as the API answered).
WATCH_RULE = """
  - name: watch
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    dry_run: true
    continue: true
    actions: [{action: label-pod, params: {labels: {seen: "yes"}}}]
"""


def audit_table() -> str:
    return delete_pod_table().replace("rules:\n", "rules:" + WATCH_RULE, 1)


def audit_records(text: str) -> tuple[Counter, Counter]:
    """How many `event` and `decision` records each event uuid got, in JSON log lines."""
    events, decisions = Counter(), Counter()
    for line in text.splitlines():
        if not line.startswith("{"):
            continue  # gunicorn's own lines
        record = json.loads(line)
        if "event" in record:
            events[record["event"]["uuid"]] += 1
        if "decision" in record:
            decisions[record["decision"]["uuid"]] += 1
    return events, decisions


def test_a_dead_workers_batch_is_logged_once_and_its_claims_taken_up_at_once(
        kube, table, make_app, tmp_path, capsys):
    pods = add_pods(kube, 6)
    journal = str(tmp_path / "journal")
    first = make_app(table, api_client=kube.api_client(), namespace="falco-responder",
                     state_dir=journal, log_format="json")
    uuids = post_events(first.test_client(), pods)
    worker = first.extensions["worker"]
    worker.owner = DEAD_OWNER
    die_after(worker, 2)
    with pytest.raises(Killed):
        worker.run_pending()  # claims all six, closes two, dies before logging them

    # A lease of 60 s, but the claims' owner is gone: a new worker takes them at start.
    second = make_app(table, api_client=kube.api_client(), namespace="falco-responder",
                      state_dir=journal, log_format="json")
    again = second.extensions["worker"]
    assert again.take_over() == 4
    assert again.run_pending() == 4
    assert {app_status(second)(u)["state"] for u in uuids} == {"done"}
    events, decisions = audit_records(capsys.readouterr().out)
    assert events == dict.fromkeys(uuids, 1)
    assert decisions == dict.fromkeys(uuids, 2)
    assert [requests_to(kube, "DELETE", pod) for pod in pods] == [[200]] * len(pods)


@pytest.fixture
def table(make_table):
    return make_table(audit_table())


@pytest.mark.slow
def test_sigkill_of_the_worker_mid_batch_keeps_one_record_each_and_resumes_in_seconds(
        kube, tmp_path):
    pods = add_pods(kube, 60)
    kube.api.delay = 0.03  # a slow API server, so the batch is still running at the kill
    table = tmp_path / "actions.yaml"
    table.write_text(audit_table())
    env = {"RESPONDER_STATE_DIR": str(tmp_path / "state"), "RESPONDER_ACTIONS_FILE": str(table),
           "RESPONDER_KUBE_CONFIG": "kubeconfig", "RESPONDER_LOG_FORMAT": "json",
           "KUBECONFIG": str(kubeconfig(tmp_path / "kubeconfig", kube.url)),
           "RESPONDER_NAMESPACE": "falco-responder", "RESPONDER_KUBE_QPS": "1000",
           "RESPONDER_KUBE_BURST": "1000", "RESPONDER_METRICS_DIR": str(tmp_path)}
    log = tmp_path / "responder.log"
    events = [netcat_event(f"u-{pod}", pod) for pod in pods]
    uuids = [e["uuid"] for e in events]
    with responder_process(env, log) as (proc, url):
        for event in events:
            assert requests.post(url, json=event, timeout=5).status_code == 202
        killed_at = kill_worker_during_a_delete(proc.pid, kube, after=15)
        # The default lease is 60 s: only a take-over finishes the rest this soon.
        found = wait_finished(remote_status(url), uuids, timeout=20)
        assert time.monotonic() - killed_at < 20
        assert {s["state"] for s in found.values()} == {"done"}, log.read_text()[-2000:]
    events_logged, decisions_logged = audit_records(log.read_text())
    assert events_logged == dict.fromkeys(uuids, 1)
    assert decisions_logged == dict.fromkeys(uuids, 2)
    assert kube.api.pods == {}


def kill_worker_during_a_delete(pid: int, kube, after: int) -> float:
    """SIGKILL the queue worker process while a DELETE is in flight, once `after` DELETEs
    were sent; returns when."""
    worker = queue_worker(pid)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        deletes = [c for c in kube.api.calls if c.method == "DELETE"]
        if len(deletes) >= after and deletes[-1].status is None:
            os.kill(worker, signal.SIGKILL)
            return time.monotonic()
        time.sleep(0.002)
    pytest.fail("no DELETE in flight to kill the worker during")


def test_a_journal_from_before_owners_and_audit_marks_is_upgraded_on_open(tmp_path):
    import sqlite3

    from responder.journal import EventStore

    old = sqlite3.connect(tmp_path / "events.sqlite3")
    old.executescript("""
        CREATE TABLE events (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, body BLOB NOT NULL,
            received REAL NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0,
            lease_until REAL, finished REAL, error TEXT);
        CREATE TABLE outcomes (event_id INTEGER NOT NULL, idx INTEGER NOT NULL,
            report TEXT NOT NULL, PRIMARY KEY (event_id, idx));
        INSERT INTO events (key, body, received, state, attempts, finished)
            VALUES ('logged-long-ago', x'7b7d', 1, 'done', 1, 2);
    """)
    old.close()
    store = EventStore(tmp_path)
    assert store.unaudited_finished(lambda owner: False) == []  # nothing re-logged
    store.add("new", b"{}")
    (claimed,) = store.claim(10, 60, owner="me")
    store.record(claimed.id, 0, {"outcome": "done"}, audit={"uuid": "new"})
    (due,) = store.audit_due([claimed.id])
    assert (due.body, due.decisions) == (b"{}", [(0, {"uuid": "new"})])
    store.close()


def test_a_forked_child_names_itself_not_its_parent():
    from responder.owners import owner_alive, process_owner

    parent = process_owner()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its own name, then leave without pytest's teardown
        os.write(write, process_owner().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 200).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child != parent and child.split(":")[1] == str(pid)
    assert not owner_alive(child)  # it has exited: its claims may be taken up
