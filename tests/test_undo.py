"""Undo without the real API server: the pure parts (what a label-pod undo restores, why an
outcome has nothing to undo, the undo record, the Slack message), the journal's keeping of
undos, the Undoer's answers without a cluster, and what the actions record when an answer
was lost (the stand-in injects it; the real API server is in test_apiserver_undo.py)."""

from __future__ import annotations

import json
import sqlite3

import pytest
import redis

from responder.actions import Outcome, Target, default_registry
from responder.errors import UndoRefused
from responder.events import event_from_dict
from responder.journal import EventStore
from responder.localstate import LocalState
from responder.notify import build_undo_message
from responder.retry import RetryPolicy
from responder.undo import (
    ALREADY_UNDONE,
    FAILED,
    NOT_UNDONE,
    NOTHING,
    UNDONE,
    ActionUndo,
    Undoer,
    check_by,
    earlier_undo,
    undo_record,
    undo_refusal,
)

from .netcat import netcat_event

REGISTRY = default_registry()
NO_WAIT = RetryPolicy(sleep=lambda seconds: None)


@pytest.mark.parametrize(("current", "expected"), [
    # Still as we set them: back to before (absent: removed).
    ({"q": "true", "team": "security"}, ({"q": None, "team": "blue"}, [])),
    # Put back already: nothing to do, nothing to say.
    ({"team": "blue"}, ({}, [])),
    # Someone changed one since: that one is theirs.
    ({"q": "reviewed", "team": "security"}, ({"team": "blue"}, ["q (now 'reviewed')"])),
    ({"q": "true"}, ({"q": None}, ["team (removed)"])),
])
def test_label_restoration_puts_back_only_what_still_has_our_value(current, expected):
    from responder.actions.pods import label_restoration

    assert label_restoration(current, {"q": "true", "team": "security"},
                             {"q": None, "team": "blue"}) == expected


def test_a_label_set_to_the_value_it_had_needs_no_restoring():
    from responder.actions.pods import label_restoration

    assert label_restoration({"q": "true"}, {"q": "true"}, {"q": "true"}) == ({}, [])


@pytest.mark.parametrize(("stored", "action", "reason"), [
    ({"outcome": "would-run", "reason": "dry-run"}, "label-pod",
     "nothing was done (would-run: dry-run)"),
    ({"outcome": "skipped", "reason": "namespace kube-system is protected"}, "label-pod",
     "nothing was done (skipped: namespace kube-system is protected)"),
    ({"outcome": "coalesced"}, "label-pod", "nothing was done (coalesced)"),
    ({"outcome": "done"}, "delete-pod", "delete-pod cannot be undone"),
    ({"outcome": "already-done", "reason": "already gone"}, "delete-pod",
     "delete-pod cannot be undone"),
    ({"outcome": "done"}, "label-pod",
     "no undo details were recorded (acted on by an older version)"),
    ({"outcome": "done", "details": {"set": {}}}, "label-pod", None),
])
def test_undo_refusal_says_why_an_outcome_has_nothing_to_undo(stored, action, reason):
    assert undo_refusal({"action": action, **stored}, REGISTRY.get(action)) == reason


def test_an_unknown_action_is_not_undone():
    assert undo_refusal({"action": "paint-pod", "outcome": "done"}, None) == \
        "unknown action 'paint-pod'"


def test_the_undo_record_is_failed_nothing_to_undo_already_undone_or_undone():
    def result(outcome):
        return ActionUndo("label-pod", {"pod": "web"}, outcome)

    assert undo_record([result(UNDONE), result(FAILED)], "a", 0, False)["outcome"] == FAILED
    assert undo_record([result(ALREADY_UNDONE), result(NOT_UNDONE)], "a", 0, True)[
        "outcome"] == ALREADY_UNDONE
    # Nothing had anything to reverse (dry-run, a deletion): said so, first time or not.
    assert undo_record([result(NOT_UNDONE)], "a", 0, False)["outcome"] == NOTHING
    assert undo_record([result(NOT_UNDONE)], "a", 0, True)["outcome"] == NOTHING
    assert undo_record([result(UNDONE), result(NOT_UNDONE)], "a", 0, False)["outcome"] == UNDONE
    assert undo_record([result(UNDONE)], "alice", 86400, False) == {
        "outcome": UNDONE, "by": "alice", "at": "1970-01-02T00:00:00+00:00",
        "actions": [{"action": "label-pod", "target": {"pod": "web"}, "outcome": UNDONE}]}


def test_an_earlier_undo_counts_for_its_slot_and_only_when_it_put_the_action_back():
    undos = [{"by": "a", "at": "t1", "actions": [
        {"slot": "r:label-pod#1", "outcome": FAILED},
        {"slot": "r:label-pod#2", "outcome": UNDONE}]}]
    assert earlier_undo(undos, "label-pod", {}, "r:label-pod#1") is None
    assert earlier_undo(undos, "label-pod", {}, "r:label-pod#2") == undos[0]


@pytest.mark.parametrize("by", ["", "   ", "x" * 129, "tab\there", 3, ["a"]])
def test_who_undoes_must_be_a_short_printable_name(by):
    with pytest.raises(UndoRefused) as caught:
        check_by(by)
    assert caught.value.status == 400


def test_who_undoes_defaults_to_anonymous():
    assert (check_by(None), check_by(" alice ")) == ("anonymous", "alice")


def test_the_slack_undo_message_escapes_who_and_why():
    event = event_from_dict(netcat_event())
    message = build_undo_message(event, {
        "uuid": "u-1", "outcome": "failed", "by": "<!channel>", "at": "2026-01-01T00:00:00+00:00",
        "actions": [{"action": "label-pod", "outcome": "undone"},
                    {"action": "cordon-node", "outcome": "failed",
                     "reason": "HTTP 403: <forbidden>"},
                    {"action": "delete-pod", "outcome": "not-undone",
                     "reason": "delete-pod cannot be undone"}]})
    text = ":leftwards_arrow_with_hook: Netcat Remote Code Execution in Container on pod " \
        "shop/web: undo FAILED for some actions by &lt;!channel&gt;"
    assert message == {"text": text, "attachments": [{
        "color": "#e8590c", "fallback": text, "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "verbatim": True, "text":
                "*Undo*\n• `label-pod`: undone\n• `cordon-node`: FAILED: HTTP 403: "
                "&lt;forbidden&gt;\n• `delete-pod`: not undone: delete-pod cannot be undone"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "verbatim": True, "text":
                "uuid u-1 · at 2026-01-01T00:00:00+00:00"}]}]}]}


# --- the journal -------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    journal = EventStore(tmp_path)
    yield journal
    journal.close()


def finished(store: EventStore, key: str, reports: list[dict]) -> int:
    store.add(key, json.dumps(netcat_event(uuid=key)).encode())
    (claimed,) = store.claim(1, 60)
    store.finish(claimed.id, "done", outcomes=dict(enumerate(reports)))
    return claimed.id


def test_the_journal_keeps_each_undo_in_order_and_status_shows_them(store):
    event_id = finished(store, "u-1", [{"action": "label-pod", "outcome": "done"}])
    assert "undos" not in store.status("u-1")
    store.record_undo(event_id, {"by": "a"})
    store.record_undo(event_id, {"by": "b"})
    assert store.status("u-1")["undos"] == [{"by": "a"}, {"by": "b"}]
    recorded = store.lookup("u-1")
    assert (recorded.state, recorded.undos) == ("done", [{"by": "a"}, {"by": "b"}])
    assert recorded.outcomes == [{"action": "label-pod", "outcome": "done"}]
    store.clock = lambda: 10**10
    assert store.prune(60) == 1
    assert store.connection().execute("SELECT COUNT(*) FROM undos").fetchone() == (0,)


def test_a_journal_written_before_undo_gets_its_table_on_open(tmp_path):
    old = EventStore(tmp_path)
    old.connection().execute("DROP TABLE undos")
    old.close()
    with pytest.raises(sqlite3.OperationalError):
        sqlite3.connect(tmp_path / "events.sqlite3").execute("SELECT * FROM undos")
    reopened = EventStore(tmp_path)
    try:
        assert reopened.undos(1) == []
    finally:
        reopened.close()


def test_without_a_cluster_reversible_actions_fail_and_the_rest_say_why(store):
    finished(store, "u-1", [
        {"action": "label-pod", "target": {"namespace": "shop", "pod": "web"},
         "outcome": "done", "details": {"pod_uid": "x", "set": {"q": "1"},
                                        "previous": {"q": None}}, "slot": "r:label-pod#1"},
        {"action": "delete-pod", "target": {"namespace": "shop", "pod": "web"},
         "outcome": "done", "slot": "r:delete-pod#1"}])
    undoer = Undoer(store, None, LocalState(store), idle_reason="no Kubernetes cluster "
                    "configured", clock=lambda: 0)
    answer = undoer.undo("u-1", "alice")
    assert answer["outcome"] == FAILED
    assert [(a["outcome"], a.get("reason")) for a in answer["actions"]] == [
        (FAILED, "no Kubernetes cluster configured"),
        (NOT_UNDONE, "delete-pod cannot be undone")]
    # A failed undo is kept and can be tried again: it is not "already undone".
    assert undoer.undo("u-1")["actions"][0]["outcome"] == FAILED
    assert [u["by"] for u in store.status("u-1")["undos"]] == ["alice", "anonymous"]


def test_unknown_and_unfinished_events_are_refused(store):
    undoer = Undoer(store, None, LocalState(store))
    with pytest.raises(UndoRefused) as unknown:
        undoer.undo("nope")
    store.add("u-2", json.dumps(netcat_event(uuid="u-2")).encode())
    with pytest.raises(UndoRefused) as pending:
        undoer.undo("u-2")
    assert (unknown.value.status, pending.value.status) == (404, 409)
    assert str(pending.value) == "event u-2 is still pending: undo it once its actions have run"


def test_an_undo_already_running_for_the_event_is_refused(store):
    finished(store, "u-1", [])
    shared = LocalState(store)
    shared.try_lock("undo:u-1", 60)
    with pytest.raises(UndoRefused) as busy:
        Undoer(store, None, shared, lock_wait=0.05).undo("u-1")
    assert (busy.value.status, str(busy.value)) == (409, "event u-1 is being undone already")


def test_shared_state_out_of_reach_is_a_503_not_a_500(store):
    class Unreachable(LocalState):
        def try_lock(self, name, seconds):
            raise redis.exceptions.ConnectionError("Redis down")

    finished(store, "u-1", [])
    with pytest.raises(UndoRefused) as down:
        Undoer(store, None, Unreachable(store)).undo("u-1")
    assert (down.value.status, str(down.value)) == (
        503, "cannot take the undo lock: ConnectionError")
    assert "undos" not in store.status("u-1")


# --- what the actions record when an answer was lost ---------------------------------------

def test_a_cordon_whose_answer_was_lost_still_records_the_node_as_schedulable_before(kube):
    kube.api.add_node("node-a")
    kube.api.fail("PATCH", "/api/v1/nodes/node-a", 504, acted=True)
    with kube.api_client() as api:
        cordon = REGISTRY.instantiate(api, 5)["cordon-node"]
        result = NO_WAIT.call(cordon.attempts(Target(node="node-a"), {}))
        assert (result.outcome, result.details["was_unschedulable"]) == (Outcome.DONE, False)
        assert cordon.undo(Target(node="node-a"), result.details).outcome is Outcome.DONE
    assert not kube.api.nodes["node-a"]["spec"].get("unschedulable")


def test_labels_whose_answer_was_lost_keep_the_values_from_before_the_first_try(kube):
    kube.api.add_pod("shop", "web", labels={"q": "old"})
    kube.api.fail("PATCH", "/api/v1/namespaces/shop/pods/web", 504, acted=True)
    with kube.api_client() as api:
        label = REGISTRY.instantiate(api, 5)["label-pod"]
        result = NO_WAIT.call(label.attempts(Target("shop", "web"), {"labels": {"q": "new"}}))
        assert result.details["previous"] == {"q": "old"}
        assert label.undo(Target("shop", "web"), result.details).outcome is Outcome.DONE
    assert kube.api.pods[("shop", "web")]["metadata"]["labels"] == {"q": "old"}
