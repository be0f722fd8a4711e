"""The queued intake and its journal: durable, once per event, capped with a drop policy."""

import json
import socket

from responder.journal import EventStore
from responder.spool import read_segment, segments

from .conftest import recorded_events

TABLE = ("rules:\n  - {name: shells, match: {rules: ['Terminal shell in container']},"
         " actions: [{action: label-pod, params: {labels: {seen: 'true'}}}]}")


def event(n: int) -> str:
    return json.dumps(dict(recorded_events()[0], uuid=f"uuid-{n}"))


def post(app, body, **headers):
    return app.test_client().post("/", data=body, headers={"Content-Type": "application/json",
                                                            **headers})


def test_event_is_on_disk_before_the_202_and_queued_once_taken_in(make_app, make_table,
                                                                   tmp_path):
    app = make_app(make_table(TABLE), state_dir=str(tmp_path / "j"))
    reply = post(app, event(1))
    assert reply.status_code == 202 and reply.get_json()["status"] == "queued"
    # Read from the file, as another process would: the record is whole.
    (path,) = segments(tmp_path / "j" / "spool")
    found = read_segment(path, 0, final=False)
    assert [key for key, _ in found.records] == ["uuid-1"] and found.at_eof
    assert json.loads(found.records[0][1])["uuid"] == "uuid-1"
    assert app.test_client().get("/events/uuid-1").get_json()["state"] == "received"
    assert app.extensions["worker"].ingest() == 1
    other = EventStore(tmp_path / "j")  # a second, independent connection sees the row
    try:
        assert other.status("uuid-1")["state"] == "pending"
    finally:
        other.close()


def test_same_uuid_twice_is_a_duplicate_and_runs_once(make_app, make_table):
    app = make_app(make_table(TABLE))
    assert post(app, event(1)).get_json()["status"] == "queued"
    assert post(app, event(1)).get_json()["status"] == "duplicate"
    assert app.extensions["worker"].run_pending() == 1


def test_event_without_uuid_is_keyed_by_its_content(make_app, make_table):
    app = make_app(make_table(TABLE))
    body = json.dumps(recorded_events()[1])
    first, second = post(app, body).get_json(), post(app, body).get_json()
    assert first["uuid"] == second["uuid"] and second["status"] == "duplicate"


def test_drop_new_policy_keeps_the_first_events_and_still_answers_202(make_app, make_table):
    app = make_app(make_table(TABLE), max_pending=2, drop_policy="drop-new")
    statuses = [post(app, event(n)).get_json()["status"] for n in range(4)]
    assert statuses == ["queued", "queued", "dropped", "dropped"]
    app.extensions["worker"].ingest()
    store = app.extensions["store"]
    assert store.status("uuid-0") and store.status("uuid-2") is None
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'responder_events_intake_total{status="dropped"} 2.0' in metrics


def test_drop_oldest_policy_gives_up_the_oldest_pending_event(make_app, make_table):
    app = make_app(make_table(TABLE), max_pending=2, drop_policy="drop-oldest")
    statuses = []
    for n in range(3):  # the worker takes each in, as it would within 50 ms
        statuses.append(post(app, event(n)).get_json()["status"])
        app.extensions["worker"].ingest()  # the cap is applied as events join the queue
    assert statuses == ["queued", "queued", "queued"]
    store = app.extensions["store"]
    assert store.status("uuid-0")["state"] == "failed"
    assert store.status("uuid-0")["error"] == "dropped: queue full"
    assert store.pending() == 2


def test_drop_oldest_without_a_worker_stops_the_spool_at_the_cap(make_app, make_table):
    # Nothing takes events in, so nothing can make room: the disk must not fill up.
    app = make_app(make_table(TABLE), max_pending=2, drop_policy="drop-oldest")
    statuses = [post(app, event(n)).get_json()["status"] for n in range(3)]
    assert statuses == ["queued", "queued", "dropped"]


def test_unknown_event_status_is_404_json(make_app, make_table):
    reply = make_app(make_table(TABLE)).test_client().get("/events/nope")
    assert reply.status_code == 404 and "no event nope" in reply.get_json()["error"]


def test_redis_down_at_intake_still_queues_the_event(make_app, make_table):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = make_app(make_table(TABLE), redis_url=f"redis://127.0.0.1:{port}/0")
    reply = post(app, event(1))
    assert reply.status_code == 202 and reply.get_json()["status"] == "queued"


def test_structured_cloudevent_is_stored_unwrapped(make_app, make_table):
    app = make_app(make_table(TABLE))
    wrapped = json.dumps({"specversion": "1.0", "data": json.loads(event(7))})
    reply = post(app, wrapped, **{"Content-Type": "application/cloudevents+json"})
    assert reply.status_code == 202
    app.extensions["worker"].run_pending()
    assert app.extensions["store"].status("uuid-7")["state"] == "done"


def test_journal_survives_a_new_store_on_the_same_directory(tmp_path):
    store = EventStore(tmp_path)
    store.add("k1", b'{"rule": "r"}')
    claimed = store.claim(10, lease_seconds=60)
    store.record(claimed[0].id, 0, {"action": "delete-pod", "outcome": "done"})
    store.close()
    reopened = EventStore(tmp_path)
    try:
        assert reopened.recorded(claimed[0].id) == {0: {"action": "delete-pod",
                                                        "outcome": "done"}}
        assert reopened.claim(10, lease_seconds=60) == []  # leased by the "dead" worker
    finally:
        reopened.close()


def test_expired_lease_is_claimed_again(tmp_path):
    now = [1000.0]
    store = EventStore(tmp_path, clock=lambda: now[0])
    try:
        store.add("k1", b"{}")
        assert [c.attempts for c in store.claim(10, lease_seconds=60)] == [1]
        now[0] += 61
        assert [c.attempts for c in store.claim(10, lease_seconds=60)] == [2]
    finally:
        store.close()


def test_prune_forgets_old_finished_events_only(tmp_path):
    now = [1000.0]
    store = EventStore(tmp_path, clock=lambda: now[0])
    try:
        store.add("done", b"{}")
        store.add("pending", b"{}")
        store.finish(store.claim(1, 60)[0].id)
        now[0] += 100
        assert store.prune(keep_seconds=50) == 1
        assert store.status("done") is None and store.status("pending") is not None
    finally:
        store.close()


def test_a_corrupted_journal_row_fails_with_the_reason_and_the_rest_still_run(make_app,
                                                                              make_table):
    app = make_app(make_table(TABLE))
    store = app.extensions["store"]
    store.add("corrupt", b"{not json")  # never passes intake; only damage puts it there
    post(app, event(1))
    assert app.extensions["worker"].run_pending() == 2
    assert store.status("corrupt")["state"] == "failed"
    assert store.status("corrupt")["error"].startswith("unreadable event: body is not valid")
    assert store.status("uuid-1")["state"] == "done"
