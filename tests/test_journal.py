"""The event journal on its own (SQLite, one row per event): keys, the cap, leases, retries,
outcomes and audit records. Time is an injected clock, so leases and delays run out at once."""

import pytest

from responder.journal import Closing, EventStore


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def journal(tmp_path, clock):
    store = EventStore(tmp_path, max_pending=3, clock=clock)
    yield store
    store.close()


def test_a_key_is_queued_once_then_a_duplicate(journal):
    assert journal.add("k1", b"{}").status == "queued"
    assert journal.add("k1", b"{}").status == "duplicate"
    assert journal.pending() == 1


def test_drop_new_refuses_past_the_cap_and_a_finished_event_makes_room(journal):
    assert [journal.add(f"k{i}", b"{}").status for i in range(4)] == [
        "queued", "queued", "queued", "dropped"]
    journal.finish(journal.claim(1, 60)[0].id)
    assert journal.add("k4", b"{}").status == "queued"


def test_drop_oldest_fails_the_oldest_pending_event_for_the_new_one(tmp_path, clock):
    journal = EventStore(tmp_path, max_pending=2, drop_policy="drop-oldest", clock=clock)
    try:
        journal.add("old", b"{}")
        journal.add("mid", b"{}")
        added = journal.add("new", b"{}")
        assert (added.status, added.dropped_key) == ("queued", "old")
        assert journal.status("old")["state"] == "failed"
        assert journal.status("old")["error"] == "dropped: queue full"
        assert [c.key for c in journal.claim(10, 60)] == ["mid", "new"]
    finally:
        journal.close()


def test_spooled_records_taken_in_past_the_cap_say_they_were_dropped(journal):
    records = [(f"k{i}", b"{}") for i in range(4)]
    added = journal.take_in("seg-1", 0, 400, records)
    assert [a.status for a in added] == ["queued", "queued", "queued", "dropped"]
    # It was answered "queued" by the intake: its status must say what became of it.
    assert journal.status("k3") == {"uuid": "k3", "state": "failed", "attempts": 0,
                                    "error": "dropped: queue full", "decisions": []}
    assert journal.spool_offset("seg-1") == 400
    assert journal.take_in("seg-1", 0, 400, records) is None  # taken in already


def test_a_claimed_event_is_not_claimed_again_until_its_lease_runs_out(journal, clock):
    journal.add("k1", b"{}")
    (first,) = journal.claim(10, lease_seconds=60)
    clock.now += 59
    assert journal.claim(10, lease_seconds=60) == []
    clock.now += 2
    (second,) = journal.claim(10, lease_seconds=60)
    assert second.attempts == 2
    # The first worker's claim is no longer its own: it must not process the event.
    assert not journal.still_ours(first, 60)
    assert journal.still_ours(second, 60)


def test_a_renewed_lease_keeps_the_event(journal, clock):
    journal.add("k1", b"{}")
    (item,) = journal.claim(10, lease_seconds=60)
    clock.now += 50
    journal.renew(item.id, 60)
    clock.now += 50
    assert journal.claim(10, lease_seconds=60) == []


def test_retry_later_defers_the_event_by_its_delay(journal, clock):
    journal.add("k1", b"{}")
    (item,) = journal.claim(10, 60)
    journal.retry_later(item.id, 30, "HTTP 503: unavailable")
    assert journal.status("k1")["state"] == "pending"
    assert journal.status("k1")["error"] == "HTTP 503: unavailable"
    clock.now += 29
    assert journal.claim(10, 60) == []
    clock.now += 1
    assert [c.attempts for c in journal.claim(10, 60)] == [2]


def test_claims_of_a_dead_process_are_due_again_at_once(journal):
    journal.add("k1", b"{}")
    journal.add("k2", b"{}")
    journal.claim(1, 60, owner="dead")
    journal.claim(1, 60, owner="alive")
    assert journal.release_dead_claims(lambda owner: owner == "alive") == 1
    assert [c.key for c in journal.claim(10, 60)] == ["k1"]


def test_outcomes_recorded_at_once_and_at_the_close_make_the_status(journal):
    journal.add("k1", b"{}")
    (item,) = journal.claim(10, 60)
    journal.record(item.id, 0, {"action": "delete-pod", "outcome": "done"})
    journal.finish_many([Closing(item.id, "done", None,
                                 {1: {"action": "label-pod", "outcome": "skipped"}})])
    assert journal.status("k1") == {
        "uuid": "k1", "state": "done", "attempts": 1, "error": None,
        "decisions": [{"action": "delete-pod", "outcome": "done"},
                      {"action": "label-pod", "outcome": "skipped"}]}
    assert journal.pending() == 0


def test_audit_records_are_due_once_and_gone_once_logged(journal):
    journal.add("k1", b'{"rule": "r"}')
    (item,) = journal.claim(10, 60, owner="w1")
    journal.record(item.id, 0, {"outcome": "done"}, audit={"action": "delete-pod"})
    journal.finish_many([Closing(item.id, "done", None, {1: {"outcome": "skipped"}},
                                 {1: {"action": "label-pod"}})])
    (due,) = journal.audit_due([item.id])
    assert due.body == b'{"rule": "r"}'
    assert due.decisions == [(0, {"action": "delete-pod"}), (1, {"action": "label-pod"})]
    # A worker that died before logging them leaves them to the next one.
    assert journal.unaudited_finished(lambda owner: False) == [item.id]
    assert journal.unaudited_finished(lambda owner: True) == []
    journal.audited([due])
    assert journal.audit_due([item.id]) == []
    assert journal.unaudited_finished(lambda owner: False) == []


def test_the_oldest_pending_age_follows_the_clock(journal, clock):
    assert journal.oldest_pending_age() == 0.0
    journal.add("k1", b"{}")
    clock.now += 12.5
    assert journal.oldest_pending_age() == 12.5


# --- approvals waiting: found by target ------------------------------------------------

def wait_for_approval(journal, key: str, targets: list[str]) -> int:
    assert journal.add(key, b"{}").status == "queued"
    item = journal.claim(1, 60)[0]
    journal.finish_many([Closing(item.id, "awaiting-approval", None, {}, approval={
        "deadline": 5000.0, "verdict": None, "targets": targets})])
    return item.id


def test_waiting_approvals_are_found_by_target_until_decided(journal):
    wait_for_approval(journal, "k1", ["r|shop|web", "r|shop|api"])
    wait_for_approval(journal, "k2", ["r|shop|db"])
    assert journal.awaiting_targets(["r|shop|api", "r|shop|db", "r|shop|other"]) == {
        "r|shop|api": "k1", "r|shop|db": "k2"}
    assert journal.awaiting_targets([]) == {}
    journal.decide("k1", {"decision": "approved", "by": "carol"})
    assert journal.awaiting_targets(["r|shop|web", "r|shop|db"]) == {"r|shop|db": "k2"}


def test_a_journal_written_before_the_target_index_is_indexed_when_opened(tmp_path, clock):
    first = EventStore(tmp_path, clock=clock)
    wait_for_approval(first, "k1", ["r|shop|web"])
    first.connection().execute("DELETE FROM approval_targets")  # as an older version left it
    first.close()
    again = EventStore(tmp_path, clock=clock)
    assert again.awaiting_targets(["r|shop|web"]) == {"r|shop|web": "k1"}
    again.close()


def test_prune_drops_the_targets_of_events_no_longer_waiting(journal, clock):
    event_id = wait_for_approval(journal, "k1", ["r|shop|web"])
    journal.decide("k1", {"decision": "rejected", "by": "carol"})
    journal.finish(event_id)
    clock.now += 10_000
    journal.prune(60)
    rows = journal.connection().execute("SELECT COUNT(*) FROM approval_targets").fetchone()
    assert rows == (0,)


def test_an_index_row_left_for_a_reused_id_never_joins_another_approval(tmp_path, clock):
    """A version before the index pruned events without their index rows; SQLite reuses
    the id of the newest deleted row: the waiting record must name the target itself."""
    journal = EventStore(tmp_path, clock=clock)
    event_id = wait_for_approval(journal, "k1", ["r|shop|web"])
    conn = journal.connection()
    conn.execute("DELETE FROM events WHERE id = ?", (event_id,))  # pruned, its row left
    assert wait_for_approval(journal, "k2", ["r|shop|db"]) == event_id  # the id again
    assert journal.awaiting_targets(["r|shop|web", "r|shop|db"]) == {"r|shop|db": "k2"}
    journal.close()


def test_a_waiting_record_that_is_not_json_does_not_stop_the_journal_opening(tmp_path, clock):
    journal = EventStore(tmp_path, clock=clock)
    wait_for_approval(journal, "k1", ["r|shop|web"])
    journal.connection().execute("DELETE FROM approval_targets")
    journal.connection().execute(
        "INSERT INTO events (key, body, received, state, approval) "
        "VALUES ('bad', x'7b7d', 0, 'awaiting-approval', '{not json')")
    journal.close()
    again = EventStore(tmp_path, clock=clock)
    assert again.awaiting_targets(["r|shop|web"]) == {"r|shop|web": "k1"}
    again.close()
