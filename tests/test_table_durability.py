"""A refused table never takes the service down: every process that restarts while an
invalid table is published serves the last good one, kept in the state directory."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from responder.actions import default_registry
from responder.app import create_app, shutdown
from responder.errors import TableError
from responder.lastgood import COPY_NAME, load_startup_table
from responder.settings import Settings

from .conftest import recorded_events
from .test_faults import remote_status, responder_process, wait_finished
from .test_reload import BROKEN, V1, V2, ConfigMapMount


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid`, with its command line."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                b"\0", b" ").decode()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found[child] = commands.get(child, "")
                frontier.append(child)
    return found


def queue_worker(pid: int) -> int:
    return _one(lambda: [p for p, cmd in descendants(pid).items() if " work " in f"{cmd} "],
                "queue worker")


def gunicorn_workers(pid: int) -> list[int]:
    """The processes serving requests: children of the `serve` child (gunicorn's master)."""
    def masters() -> list[int]:
        tree = descendants(pid)
        # A child just forked to start a worker also reads "serve" until it execs: the
        # master is the one with children of its own.
        return [p for p, cmd in tree.items() if cmd.rstrip().endswith("serve")
                and _parent(p) == pid and any(_parent(c) == p for c in tree)]
    master = _one(masters, "gunicorn master")
    return [p for p in descendants(pid) if _parent(p) == master]


def _one(find, what: str) -> int:
    """The one process `find` names, waiting out a restart or a fork in progress."""
    deadline = time.monotonic() + 5
    while len(found := find()) != 1:
        assert time.monotonic() < deadline, f"{len(found)} {what} processes"
        time.sleep(0.05)
    return found[0]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0  # gone meanwhile


def post(url: str, uuid: str) -> None:
    event = {**recorded_events()[0], "uuid": uuid}
    reply = requests.post(url, json=event, timeout=5)
    assert reply.status_code == 202, reply.text


def matched_rules(url: str, uuid: str) -> list[str]:
    found = wait_finished(remote_status(url), [uuid], timeout=20)[uuid]
    return [d["slot"].split(":")[0] for d in found["decisions"]]


def wait_for(condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def refused(url: str) -> dict | None:
    return readiness(url).get("table_refused")


def readiness(url: str) -> dict:
    try:
        return requests.get(url + "/readyz", timeout=2).json()
    except requests.RequestException:
        return {}


def metric_line(url: str, name: str) -> str:
    text = requests.get(url + "/metrics", timeout=5).text
    return next(line for line in text.splitlines() if line.startswith(name + " "))


@pytest.mark.slow
def test_every_process_restarted_under_a_refused_table_serves_the_last_good_one(tmp_path):
    (tmp_path / "configmap").mkdir()
    mount = ConfigMapMount(tmp_path / "configmap", V1)
    env = {"RESPONDER_STATE_DIR": str(tmp_path / "state"), "RESPONDER_ACTIONS_FILE": mount.path,
           "RESPONDER_KUBE_CONFIG": "none", "RESPONDER_RELOAD_SECONDS": "0.1"}
    log = tmp_path / "responder.log"
    with responder_process(env, log) as (proc, url):
        post(url, "before")
        assert matched_rules(url, "before") == ["first"]
        mount.update(BROKEN)
        wait_for(lambda: readiness(url).get("table_reload_errors"), what="the refusal")

        # The queue worker dies and is restarted (in about a second) while BROKEN is there.
        os.kill(queue_worker(proc.pid), signal.SIGKILL)
        # So does the process serving requests; gunicorn's master starts another.
        for pid in gunicorn_workers(proc.pid):
            os.kill(pid, signal.SIGKILL)
        time.sleep(1.5)
        wait_for(lambda: len(gunicorn_workers(proc.pid)) == 1, what="a new gunicorn worker")
        post(url, "while-refused")
        assert matched_rules(url, "while-refused") == ["first"], log.read_text()[-3000:]
        pending = refused(url)
        assert pending["file"] == mount.path and pending["sha256"]
        ready = requests.get(url + "/readyz", timeout=5).json()
        assert any("unknown action 'explode'" in p for p in ready["table_reload_errors"])
        assert metric_line(url, "responder_action_table_valid") == \
            "responder_action_table_valid 0.0"
        assert metric_line(url, f'responder_action_table_refused{{file="{mount.path}"}}') \
            .endswith(" 1.0")
        assert proc.poll() is None

    # The whole service restarted, BROKEN still published: it starts on the copy.
    with responder_process(env, log) as (proc, url):
        assert refused(url)["file"] == mount.path
        post(url, "after-restart")
        assert matched_rules(url, "after-restart") == ["first"]
        mount.update(V2)  # a good table again: taken up, the refusal cleared
        wait_for(lambda: refused(url) is None and requests.get(
            url + "/readyz", timeout=2).json()["table"] == mount.path, what="the good table")
        wait_for(lambda: metric_line(url, "responder_action_table_valid").endswith(" 1.0"),
                 what="table_valid 1")
        assert metric_line(url, f'responder_action_table_refused{{file="{mount.path}"}}') \
            .endswith(" 0.0")
        post(url, "fixed")
        wait_for(lambda: matched_rules(url, "fixed") == ["second"], what="the new table")
    kept = json.loads((tmp_path / "state" / COPY_NAME).read_text())
    assert (kept["source"], kept["text"]) == (mount.path, V2)


def test_a_first_start_with_an_invalid_table_and_no_copy_refuses(tmp_path):
    table = tmp_path / "actions.yaml"
    table.write_text(BROKEN)
    with pytest.raises(TableError, match="unknown action 'explode'"):
        load_startup_table(str(table), default_registry(), tmp_path / "state")


def test_a_copy_of_another_file_is_not_used(tmp_path):
    state, registry = tmp_path / "state", default_registry()
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(V1)
    second.write_text(BROKEN)
    assert load_startup_table(str(first), registry, state).refused is None
    with pytest.raises(TableError):
        load_startup_table(str(second), registry, state)
    first.write_text(BROKEN)
    startup = load_startup_table(str(first), registry, state)
    assert [r.name for r in startup.table.rules] == ["first"]
    assert "unknown action 'explode'" in str(startup.refused)


def test_an_unwritable_state_dir_only_loses_the_copy(tmp_path, caplog):
    table = tmp_path / "actions.yaml"
    table.write_text(V1)
    state = tmp_path / "state"
    state.write_text("a file where the directory should be")
    startup = load_startup_table(str(table), default_registry(), state)
    assert startup.refused is None and [r.name for r in startup.table.rules] == ["first"]
    assert "cannot keep a copy of the action table" in caplog.text


def test_the_packaged_default_table_reads_as_valid(tmp_path):
    app = create_app(Settings.of(intake="inline", state_dir=str(tmp_path)), api_client=None,
                     slack=None)
    try:
        text = app.test_client().get("/metrics").get_data(as_text=True)
        assert "responder_action_table_valid 1.0" in text.splitlines()
    finally:
        shutdown(app)
