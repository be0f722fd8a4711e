"""The pure comparison of two tables' replay lines (responder.tablediff)."""

from responder.tablediff import changed_events, decision_change

POD = {"namespace": "shop", "pod": "web-1"}


def line(uuid, *actions, matched=("r",)):
    return {"uuid": uuid, "rule": "Terminal shell in container", "priority": "Notice",
            "matched": list(matched), "actions": list(actions)}


def act(action, outcome="would-run", reason="dry-run", target=POD):
    return {"action": action, "target": dict(target), "outcome": outcome, "reason": reason}


def test_identical_decisions_are_no_change():
    same = line("a", act("label-pod"))
    assert decision_change(same, dict(same)) is None


def test_added_removed_and_changed_actions_are_told_apart():
    before = line("a", act("label-pod"), act("delete-pod"))
    after = line("a", act("label-pod", reason=None), act("isolate-pod"))
    change = decision_change(before, after)
    assert change["added"] == [act("isolate-pod")]
    assert change["removed"] == [act("delete-pod")]
    assert change["changed"] == [{"before": act("label-pod"),
                                  "after": act("label-pod", reason=None)}]


def test_two_uses_of_one_action_on_one_target_stay_two_decisions():
    before = line("a", act("label-pod"), act("label-pod"))
    after = line("a", act("label-pod"))
    assert decision_change(before, after)["removed"] == [act("label-pod")]


def test_only_events_whose_decisions_differ_are_listed_and_pairing_is_by_uuid():
    before = [line("a", act("label-pod")), line("b", act("label-pod"))]
    after = [line("b", act("label-pod")), line("a", act("delete-pod"), matched=("r2",))]
    changes = changed_events(before, after)
    assert [c["uuid"] for c in changes] == ["a"]
    assert changes[0]["matched"] == {"before": ["r"], "after": ["r2"]}


def test_an_event_only_one_side_has_counts_as_all_added_or_removed():
    changes = changed_events([], [line("new", act("cordon-node", target={"node": "n1"}))])
    assert changes[0]["added"] == [act("cordon-node", target={"node": "n1"})]
    assert changes[0]["matched"]["before"] == []


def test_error_lines_are_paired_by_line_number_and_keep_their_error():
    bad = {"line": 3, "error": "not valid JSON"}
    assert changed_events([bad], [dict(bad)]) == []
    assert changed_events([], [line("x", act("label-pod")), bad])[0]["uuid"] == "x"


def test_an_event_recorded_twice_is_paired_occurrence_by_occurrence():
    twice = [line("a", act("label-pod")), line("a", act("label-pod"))]
    assert changed_events(twice, [dict(x) for x in twice]) == []
    changes = changed_events(twice, [line("a", act("label-pod")), line("a")])
    assert len(changes) == 1 and changes[0]["removed"] == [act("label-pod")]


def test_a_line_that_stops_or_starts_parsing_is_a_change_but_new_wording_is_not():
    bad = {"line": 2, "error": "not valid JSON"}
    assert changed_events([], [bad]) == [{**decision_change(None, bad), **bad}]
    assert changed_events([bad], [])[0]["error"] == "not valid JSON"
    assert changed_events([bad], [{"line": 2, "error": "event has no 'priority'"}]) == []
