"""A full or read-only state volume: every request answers (507 for events), no process
dies, nothing acknowledged is lost, and the service recovers by itself."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
import uuid as uuids
from pathlib import Path

import pytest
import requests

from responder.journal import EventStore

from .conftest import recorded_events
from .test_faults import remote_status, responder_process, wait_finished
from .test_table_durability import descendants, gunicorn_workers, queue_worker, wait_for


@pytest.fixture
def volume(tmp_path):
    """A 4 MiB tmpfs: a state volume that really fills (skipped where mounting is refused)."""
    root = tmp_path / "volume"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)],
                             capture_output=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield root
    subprocess.run(["umount", "-l", str(root)], check=False)


def fill(root: Path) -> Path:
    filler = root / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True,
                   check=False)
    return filler


@pytest.fixture
def read_only(tmp_path):
    """Makes a directory read-only for whoever opens it next (a read-only bind mount over
    it; files already open stay writable, as after a remount the kernel forced)."""
    mounted: list[Path] = []

    def make(directory: Path) -> None:
        for args in (["--bind", str(directory), str(directory)],
                     ["-o", "remount,bind,ro", str(directory)]):
            done = subprocess.run(["mount", *args], capture_output=True, check=False)
            if done.returncode:
                undo()
                pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
            if not mounted:
                mounted.append(directory)

    def undo() -> None:
        # Lazily: files opened through the read-only mount stay so, as they would on a
        # volume remounted read-write; what is opened next is writable.
        while mounted:
            subprocess.run(["umount", "-l", str(mounted.pop())], check=False)
    make.undo = undo
    yield make
    undo()


def post(url: str, rule: str) -> tuple[int, str]:
    """A genuine event with a rule name never seen (a new metric label each time)."""
    event = {**recorded_events()[0], "uuid": uuids.uuid4().hex, "rule": rule}
    reply = requests.post(url, json=event, timeout=10)
    return reply.status_code, event["uuid"]


def post_until_full(url: str, rule: str, accepted: list[str], tries: int = 20) -> list[int]:
    """Post until one is refused 507 (or `tries` ran out): the statuses; what was taken in
    (room left in a spool segment) is added to `accepted`."""
    statuses: list[int] = []
    for i in range(tries):
        status, key = post(url, f"{rule} {i}")
        statuses.append(status)
        if status == 202:
            accepted.append(key)
        elif status == 507:
            break
    return statuses


def status_of(url: str):
    """/events/<uuid>, with an event not yet taken into the journal (404: the process that
    spooled it was restarted) shown as "received"."""
    def status(uuid: str) -> dict:
        reply = requests.get(f"{url}/events/{uuid}", timeout=5)
        return reply.json() if reply.status_code == 200 else {"state": str(reply.status_code)}
    return status


def processes_alive(pid: int) -> dict[str, int]:
    tree = descendants(pid)
    return {"worker": queue_worker(pid), "servers": len(gunicorn_workers(pid)),
            "all": len(tree)}


@pytest.mark.slow
def test_a_full_then_read_only_state_volume_answers_507_and_recovers(volume, tmp_path):
    env = {"RESPONDER_STATE_DIR": str(volume / "state"), "RESPONDER_KUBE_CONFIG": "none",
           "RESPONDER_METRICS_DIR": str(tmp_path)}
    log = tmp_path / "responder.log"
    accepted = []
    with responder_process(env, log) as (proc, url):
        status, key = post(url, "before")
        assert status == 202
        accepted.append(key)
        wait_finished(remote_status(url), accepted, timeout=20)
        filler = fill(volume)
        statuses = post_until_full(url, "while full", accepted)
        assert statuses[-1] == 507, statuses
        before = processes_alive(proc.pid)
        # Both kinds of process restarted while the disk is full still come up.
        os.kill(before["worker"], signal.SIGKILL)
        for pid in gunicorn_workers(proc.pid):
            os.kill(pid, signal.SIGKILL)
        time.sleep(2.5)
        wait_for(lambda: len(gunicorn_workers(proc.pid)) == 1, what="a new server process")
        # What the killed processes held is free again, and a new process's spool segment
        # may still fit in it: those events are taken (and must be decided below).
        statuses = post_until_full(url, "after restarts, full", accepted)
        assert statuses[-1] == 507, statuses
        assert requests.get(url + "/readyz", timeout=5).status_code == 200
        assert requests.get(url + "/metrics", timeout=5).status_code == 200
        assert requests.get(f"{url}/events/{accepted[0]}", timeout=5).status_code == 200

        filler.unlink()
        # Recovers by itself: new events are accepted and every acknowledged one decided.
        wait_for(lambda: post(url, "room again")[0] == 202, what="202 again")
        status, key = post(url, "after")
        assert status == 202
        accepted.append(key)
        found = wait_finished(status_of(url), accepted, timeout=30)
        assert {s["state"] for s in found.values()} == {"done"}
        assert proc.poll() is None
    text = log.read_text()
    assert "status -7" not in text and "Worker failed to boot" not in text, text[-3000:]


def restart_all(pid: int) -> None:
    """SIGKILL the queue worker and the serving process; wait for both to be back."""
    os.kill(queue_worker(pid), signal.SIGKILL)
    for child in gunicorn_workers(pid):
        os.kill(child, signal.SIGKILL)
    time.sleep(2.5)  # the supervisor's restart pause, then the worker's start
    wait_for(lambda: len(gunicorn_workers(pid)) == 1, what="a new server process")
    queue_worker(pid)


@pytest.mark.slow
def test_processes_restarted_on_a_read_only_state_volume_answer_and_recover(tmp_path,
                                                                             read_only):
    state = tmp_path / "state"
    env = {"RESPONDER_STATE_DIR": str(state), "RESPONDER_KUBE_CONFIG": "none",
           "RESPONDER_METRICS_DIR": str(tmp_path)}
    log = tmp_path / "responder.log"
    with responder_process(env, log) as (proc, url):
        status, first = post(url, "before")
        assert status == 202
        wait_finished(remote_status(url), [first], timeout=20)
        read_only(state)
        restart_all(proc.pid)
        assert post(url, "read-only")[0] == 507
        assert requests.get(url + "/readyz", timeout=5).status_code == 200
        assert requests.get(url + "/metrics", timeout=5).status_code == 200
        assert requests.get(f"{url}/events/{first}", timeout=5).status_code in (200, 507)
        read_only.undo()
        assert os.access(state / "events.sqlite3", os.W_OK), subprocess.run(
            ["mount"], capture_output=True, text=True).stdout[-2000:]
        wait_for(lambda: post(url, "writable again")[0] == 202, what="202 again")
        status, last = post(url, "after")
        assert status == 202
        found = wait_finished(status_of(url), [first, last], timeout=30)
        assert {s["state"] for s in found.values()} == {"done"}
        assert proc.poll() is None
    text = log.read_text()
    assert "Worker failed to boot" not in text, text[-3000:]


def test_the_worker_outlives_a_journal_it_cannot_write_and_says_so_once(make_table, make_app,
                                                                          capsys):
    app = make_app(make_table("rules: []\n"), start_worker=True)
    store, worker = app.extensions["store"], app.extensions["worker"]
    real_claim = store.claim

    def full(*args):
        raise sqlite3.OperationalError("database or disk is full")
    store.claim = full
    time.sleep(0.3)  # several polls
    store.claim = real_claim
    assert capsys.readouterr().out.count("the worker loop failed") == 1
    assert all(thread.is_alive() for thread in worker._threads)
    reply = app.test_client().post("/", json={**recorded_events()[0], "uuid": "after-full"})
    assert reply.status_code == 202
    wait_finished(lambda u: app.test_client().get(f"/events/{u}").get_json(),
                  ["after-full"], timeout=10)
    assert "the worker loop works again" in capsys.readouterr().out


def test_a_journal_that_cannot_be_opened_does_not_stop_a_process_from_starting(tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    store = EventStore(blocked)  # as on a read-only or full volume: no exception here
    with pytest.raises((OSError, sqlite3.Error)):
        store.pending()
