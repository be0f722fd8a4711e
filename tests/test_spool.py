"""The intake spool: records survive the writer, torn and damaged tails are given up
loudly, and the worker takes every record into the journal exactly once."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from responder.spool import (
    HEADER,
    MAGIC,
    MARK_SECONDS,
    SpoolWriter,
    read_segment,
    segments,
    writer_gone,
)

from .conftest import recorded_events

TABLE = ("rules:\n  - {name: shells, match: {rules: ['Terminal shell in container']},"
         " actions: [{action: label-pod, params: {labels: {seen: 'true'}}}]}")


def body(n: int) -> bytes:
    return json.dumps(dict(recorded_events()[0], uuid=f"uuid-{n}")).encode()


def test_records_from_many_threads_read_back_whole(tmp_path):
    spool = SpoolWriter(tmp_path)
    threads = [threading.Thread(target=lambda t=t: [spool.append(f"k{t}-{i}", body(i))
                                                   for i in range(200)]) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (path,) = segments(tmp_path)
    found = read_segment(path, 0, final=False, limit=10_000)
    assert len(found.records) == 800 and found.at_eof and found.end == path.stat().st_size
    assert {key for key, _ in found.records} == {f"k{t}-{i}" for t in range(4) for i in range(200)}
    assert all(json.loads(data)["rule"] for _, data in found.records)
    spool.close()


def test_a_segment_is_finished_only_once_its_writer_lets_go(tmp_path):
    spool = SpoolWriter(tmp_path, segment_bytes=1000)
    for i in range(2):  # a record of over 1,000 bytes fills a segment: the next opens one
        spool.append(f"k{i}", b"x" * 1000)
    first, second = segments(tmp_path)
    assert writer_gone(first) and not writer_gone(second)
    spool.close()
    assert writer_gone(second)


def test_a_torn_tail_waits_for_a_live_writer_and_is_dropped_once_it_is_gone(tmp_path, logs):
    spool = SpoolWriter(tmp_path)
    spool.append("whole", b'{"a": 1}')
    (path,) = segments(tmp_path)
    with open(path, "ab") as f:  # half a record, as a crash in mid-write leaves it
        f.write(HEADER.pack(MAGIC, 0, 4, 100) + b"torn")
    live = read_segment(path, 0, final=False)
    assert [k for k, _ in live.records] == ["whole"] and not live.at_eof
    assert live.discarded == 0
    gone = read_segment(path, 0, final=True)
    assert [k for k, _ in gone.records] == ["whole"] and gone.at_eof
    assert gone.end == path.stat().st_size and gone.discarded == HEADER.size + 4
    assert "cut short by a crash" in logs.text
    spool.close()


def test_zeroed_blocks_after_a_power_loss_are_given_up_with_an_error(tmp_path, logs):
    spool = SpoolWriter(tmp_path)
    spool.append("a", b"1")
    spool.append("b", b"2")
    spool.close()
    (path,) = segments(tmp_path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\0" * (size - size // 2))
    found = read_segment(path, 0, final=True)
    assert [k for k, _ in found.records] == ["a"] and found.at_eof and found.end == size
    assert "no record header" in logs.text


def test_a_changed_byte_fails_the_checksum(tmp_path, logs):
    spool = SpoolWriter(tmp_path)
    spool.append("a", b"payload")
    spool.close()
    (path,) = segments(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert read_segment(path, 0, final=True).records == []
    assert "checksum mismatch" in logs.text


def test_two_workers_take_every_spooled_event_in_exactly_once(make_app, make_table, tmp_path):
    state = str(tmp_path / "shared")
    intake = make_app(make_table(TABLE), state_dir=state)
    workers = [make_app(make_table(TABLE), state_dir=state).extensions["worker"]
               for _ in range(2)]
    client = intake.test_client()
    for n in range(300):
        assert client.post("/", data=body(n), content_type="application/json").status_code == 202
    taken = []
    threads = [threading.Thread(target=lambda w=w: taken.append(w.ingest())) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(taken) == 300
    store = workers[0].store
    assert store.pending() == 300 and all(store.status(f"uuid-{n}") for n in range(300))
    # A resend that reached the spool again (say, after a restart) is still queued once.
    intake.extensions["spool"].append("uuid-7", body(7))
    assert workers[1].ingest() == 0 and store.pending() == 300


def test_finished_segments_are_removed_after_they_are_taken_in(make_app, make_table, tmp_path):
    app = make_app(make_table(TABLE))
    spool = app.extensions["spool"]
    spool.append("uuid-1", body(1))
    spool.close()  # the writer lets go, as a stopped server would
    worker = app.extensions["worker"]
    assert worker.ingest() == 1
    assert segments(spool.directory) == []
    # Marked finished: a reader that was late with the same batch cannot take it in again.
    assert worker.store.spool_offset(spool.name) == -1
    assert worker.store.take_in(spool.name, 0, 100, [("uuid-2", b"{}")]) is None
    assert worker.store.status("uuid-2") is None


def test_a_segment_being_created_is_not_mistaken_for_an_abandoned_one(tmp_path):
    spool = SpoolWriter(tmp_path)
    spool.append("k", b"1")
    # Before its lock is taken a segment has a name the reader skips; only a rename
    # to its real name, lock held, makes it visible.
    (tmp_path / "00000000000000000001-1-dead.spool.new").write_bytes(b"")
    (path,) = segments(tmp_path)
    assert path.name == spool.name and not writer_gone(path)
    spool.close()


def test_a_long_uuid_is_spooled_and_queued_whole(make_app, make_table):
    app = make_app(make_table(TABLE))
    uuid = "u" * 70_000  # past a 16-bit length field
    data = json.dumps(dict(recorded_events()[0], uuid=uuid))
    reply = app.test_client().post("/", data=data, content_type="application/json")
    assert reply.status_code == 202
    assert app.extensions["worker"].ingest() == 1
    assert app.extensions["store"].status(uuid)["state"] == "pending"


def test_an_event_dropped_when_taken_in_says_so_in_its_status(make_app, make_table):
    app = make_app(make_table(TABLE), max_pending=1)
    store = app.extensions["store"]
    spool = app.extensions["spool"]
    for n in range(2):  # past the intake's own check, as another process's spool would be
        spool.append(f"uuid-{n}", body(n))
    app.extensions["worker"].ingest()
    assert store.status("uuid-0")["state"] == "pending"
    assert store.status("uuid-1")["state"] == "failed"
    assert store.status("uuid-1")["error"] == "dropped: queue full"
    assert store.pending() == 1
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'responder_events_intake_total{status="dropped"} 1.0' in metrics


@pytest.mark.slow
def test_a_full_disk_is_a_507_naming_the_spool_never_a_500(tmp_path):
    # A file size limit stands in for a full disk: the append fails with EFBIG.
    code = (
        "import json, resource, signal, sys\n"
        "from responder.app import create_app\n"
        "from responder.settings import Settings\n"
        "app = create_app(Settings.of(state_dir=sys.argv[1]), api_client=None,"
        " start_worker=False)\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))\n"
        "reply = app.test_client().post('/', data=sys.stdin.read(),"
        " content_type='application/json')\n"
        "print(reply.status_code, json.dumps(reply.get_json()))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], input=body(1).decode(),
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent.parent, check=False)
    status, _, reply = done.stdout.strip().splitlines()[-1].partition(" ")
    assert status == "507", done.stdout + done.stderr
    assert "cannot write to the spool" in json.loads(reply)["error"]


def test_a_writer_killed_mid_stream_loses_no_acknowledged_record(tmp_path):
    # The child appends and reports each record as done; SIGKILL comes at an arbitrary point.
    code = ("import sys; from responder.spool import SpoolWriter\n"
            "s = SpoolWriter(sys.argv[1])\n"
            "for i in range(100000):\n"
            "    s.append(f'k{i}', b'x' * 500); print(i, flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parent.parent)
    acknowledged = -1
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 2000:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    (path,) = segments(tmp_path)
    assert writer_gone(path)
    found = read_segment(path, 0, final=True, limit=10**6)
    keys = [key for key, _ in found.records]
    assert keys == [f"k{i}" for i in range(len(keys))] and len(keys) > acknowledged


def test_the_oldest_unread_record_is_dated_within_a_mark(tmp_path):
    spool = SpoolWriter(tmp_path)
    before = time.time()
    spool.append("k0", body(0))
    spool.append("k1", body(1))
    time.sleep(MARK_SECONDS * 2)
    later = time.time()
    spool.append("k2", body(2))
    name = spool.name
    assert spool.unread(lambda names: {}) == (3, pytest.approx(before, abs=MARK_SECONDS))
    count, oldest = spool.unread(lambda names: {name: 2})  # the first two are taken in
    assert count == 1 and later <= oldest < later + MARK_SECONDS
    assert spool.unread(lambda names: {name: 3}) == (0, None)
    spool.close()
