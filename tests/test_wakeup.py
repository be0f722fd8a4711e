"""The intake wakes the queue worker of another process at once, instead of leaving the
event to the worker's next poll of the spool."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from responder.wakeup import WakeListener, WakeSender, wake_path

from .netcat import netcat_event

SEND = ("import sys; from responder.wakeup import WakeSender; "
        "s = WakeSender(sys.argv[1]); s.set(); s.close()")


def test_a_datagram_from_another_process_wakes_the_listener(tmp_path):
    woken = threading.Event()
    listener = WakeListener(tmp_path / "spool", woken).start()
    try:
        assert listener.listening
        subprocess.run([sys.executable, "-c", SEND, str(tmp_path / "spool")], check=True,
                       timeout=30)
        assert woken.wait(5)
    finally:
        listener.close()


def test_each_spool_has_its_own_address_and_one_listener(tmp_path):
    assert wake_path(tmp_path / "a") != wake_path(tmp_path / "b")
    first = WakeListener(tmp_path / "a", threading.Event()).start()
    second = WakeListener(tmp_path / "a", threading.Event()).start()
    try:
        assert first.listening and not second.listening  # the second polls instead
    finally:
        first.close()
        second.close()
    # A closed listener frees the address at once (it removes its socket file).
    third = WakeListener(tmp_path / "a", threading.Event())
    assert third.listening
    third.close()


def test_sending_with_nobody_listening_is_harmless(tmp_path):
    sender = WakeSender(tmp_path / "spool")
    for _ in range(1000):  # refused while nobody listens; never raises, never blocks
        sender.set()
    sender.close()


def test_a_storm_of_wakeups_is_taken_in_one_go(tmp_path):
    woken = threading.Event()
    listener = WakeListener(tmp_path / "spool", woken)
    sender = WakeSender(tmp_path / "spool")
    for _ in range(500):  # queued before the thread runs; a full buffer drops the rest
        sender.set()
    listener.start()
    try:
        assert woken.wait(5)
    finally:
        sender.close()
        listener.close()


def test_an_event_spooled_by_an_intake_only_server_is_acted_on_before_the_poll(
        make_app, make_table, tmp_path):
    # The `responder serve` split: a server with RESPONDER_WORKER=off takes events in, a
    # worker elsewhere (here another app on the same state directory) acts on them.
    state = str(tmp_path / "state")
    table = make_table("rules: [{name: r, match: {rules: ['Netcat Remote Code Execution "
                       "in Container']}, actions: [{action: label-pod, params: {labels: "
                       "{q: 'true'}}}]}]")
    intake = make_app(table, start_worker=True, worker="off", state_dir=state)
    worker_app = make_app(table, start_worker=True, worker="thread", state_dir=state)
    assert "wakeup" not in intake.extensions and worker_app.extensions["wakeup"].listening
    worker = worker_app.extensions["worker"]
    worker.poll_seconds = 30.0  # only a wake-up can make it look in time
    worker.wake.set()  # the loop's current wait ends, the next one is 30 s
    time.sleep(0.3)
    reply = intake.test_client().post("/", data=json.dumps(netcat_event("u-wake")),
                                      content_type="application/json")
    assert reply.status_code == 202
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = worker_app.extensions["store"].status("u-wake")
        if status and status["state"] == "done":
            break
        time.sleep(0.02)
    assert status and status["state"] == "done", status
    assert time.monotonic() < deadline

