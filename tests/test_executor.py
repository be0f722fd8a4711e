"""The executor and its guardrails, without Flask or a worker: a plan in, one report per
decision out, against the Kubernetes stand-in (tests/kubeapi.py). Waits between retries go to
an injected recorder, so nothing here sleeps."""

import json

import pytest

from responder.decisions import plan_response
from responder.events import parse_event
from responder.executor import Executor
from responder.guardrails import Guardrails
from responder.journal import EventStore
from responder.localstate import LocalState
from responder.retry import RetryPolicy

from .netcat import FULL_CID, netcat_event

POD = "/api/v1/namespaces/shop/pods/web"
LABEL_DELETE_CORDON = """
defaults: {dry_run: %s, protected_namespaces: [kube-system]%s}
rules:
  - name: contain
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true"}}
      - action: delete-pod
        params: {grace_period_seconds: 0}
      - action: cordon-node
"""


def table_text(dry_run: bool = False, defaults: str = "") -> str:
    return LABEL_DELETE_CORDON % ("true" if dry_run else "false",
                                  f", {defaults}" if defaults else "")


@pytest.fixture
def cluster(kube):
    kube.api.add_pod("shop", "web", node="node-a", container_ids=(FULL_CID,))
    kube.api.add_node("node-a")
    kube.api.add_node("node-b")
    return kube


@pytest.fixture
def store(tmp_path):
    journal = EventStore(tmp_path)
    yield journal
    journal.close()


@pytest.fixture
def run(cluster, store, make_table, registry):
    """run(table text, event) -> [(action, outcome, reason)]; `run.waits` holds the retry
    waits the executor asked for, `run.executor` the last executor built."""
    def execute(text: str, event: dict, own_pod=(None, None), prior=None, record=None):
        table = make_table(text)
        shared = LocalState(store)
        guardrails = Guardrails(shared, own_pod=own_pod)
        execute.executor = Executor(
            registry.instantiate(cluster.api_client(), 5.0), guardrails=guardrails,
            shared=shared, retry=RetryPolicy(sleep=execute.waits.append))
        plan = plan_response(table, registry, parse_event(json.dumps(event).encode()))
        reports = execute.executor.execute(plan, prior=prior, record=record)
        return [(r.decision.action, str(r.result.outcome), r.result.reason) for r in reports]

    execute.waits = []
    return execute


def test_an_armed_plan_acts_in_order_and_reports_each_action(run, cluster):
    assert run(table_text(), netcat_event()) == [
        ("label-pod", "done", None), ("delete-pod", "done", None),
        ("cordon-node", "done", None)]
    assert [(m, p) for m, p, _ in cluster.api.mutations()] == [
        ("PATCH", POD), ("DELETE", POD), ("PATCH", "/api/v1/nodes/node-a")]


def test_a_dry_run_plan_sends_no_request(run, cluster):
    outcomes = run(table_text(dry_run=True), netcat_event())
    assert {o[1:] for o in outcomes} == {("would-run", "dry-run")}
    assert cluster.api.calls == []


def test_without_actions_every_decision_would_run_with_the_idle_reason(make_table, registry):
    plan = plan_response(make_table(table_text()), registry,
                         parse_event(json.dumps(netcat_event()).encode()))
    reports = Executor(None, idle_reason="no Kubernetes cluster configured").execute(plan)
    assert {(str(r.result.outcome), r.result.reason) for r in reports} == {
        ("would-run", "no Kubernetes cluster configured")}


def test_transient_errors_wait_by_backoff_then_succeed_without_sleeping(run, cluster):
    cluster.api.fail("DELETE", POD, 503, "try again", times=2)
    assert run(table_text(), netcat_event())[1] == ("delete-pod", "done", None)
    assert len(run.waits) == 2 and all(0 <= w <= RetryPolicy().maximum for w in run.waits)


def test_retry_after_sets_the_wait(run, cluster):
    cluster.api.fail("DELETE", POD, 429, "slow down", headers={"Retry-After": "3"})
    assert run(table_text(), netcat_event())[1] == ("delete-pod", "done", None)
    assert run.waits == [3.0]


def test_a_failed_call_is_reported_and_the_next_actions_still_run(run, cluster):
    cluster.api.fail("DELETE", POD, 500, "etcdserver: request timed out", times=10)
    assert run(table_text(), netcat_event()) == [
        ("label-pod", "done", None),
        ("delete-pod", "failed", "HTTP 500: etcdserver: request timed out"),
        ("cordon-node", "done", None)]
    assert len(run.waits) == RetryPolicy().attempts - 1


def test_outcomes_recorded_by_an_earlier_attempt_are_not_run_again(run, cluster):
    first = []
    run(table_text(), netcat_event(), record=lambda i, report: first.append((i, report)))
    assert [i for i, _ in first] == [0, 1, 2]
    cluster.api.calls.clear()
    prior = {i: report.result for i, report in first}
    again = run(table_text(), netcat_event(), prior=prior)
    assert [o[1] for o in again] == ["done", "done", "done"]
    assert cluster.api.mutations() == []


def test_a_pod_action_after_its_deletion_is_skipped(run):
    text = table_text().replace("      - action: cordon-node\n",
                                "      - action: label-pod\n"
                                "        params: {labels: {after: \"yes\"}}\n")
    assert run(text, netcat_event())[2] == ("label-pod", "skipped",
                                            "pod was deleted by an earlier action")


def test_a_second_event_for_the_same_rule_and_pod_is_coalesced(run, cluster):
    run(table_text(), netcat_event(uuid="first"))
    cluster.api.add_pod("shop", "web", node="node-a", container_ids=(FULL_CID,))
    cluster.api.calls.clear()
    outcomes = run(table_text(), netcat_event(uuid="second"))
    assert {o[1] for o in outcomes} == {"coalesced"}
    assert cluster.api.calls == []  # coalesced before the pod is even read


# --- guardrails, through the executor ------------------------------------------------

def test_an_event_whose_container_is_not_in_the_pod_acts_on_nothing(run, cluster):
    outcomes = run(table_text(), netcat_event(**{"container.id": "ffffffffffff"}))
    assert {o[1] for o in outcomes} == {"skipped"}
    assert all("container" in o[2] for o in outcomes)
    assert cluster.api.mutations() == []


def test_the_responders_own_pod_is_never_acted_on(run, cluster):
    outcomes = run(table_text(), netcat_event(), own_pod=("shop", "web"))
    assert outcomes[:2] == [("label-pod", "skipped", "the responder's own pod"),
                            ("delete-pod", "skipped", "the responder's own pod")]


def test_a_daemonset_pod_is_labelled_but_not_deleted(run, cluster):
    cluster.api.add_pod("shop", "web", node="node-a", container_ids=(FULL_CID,),
                        owner_kind="DaemonSet")
    outcomes = run(table_text(), netcat_event())
    assert outcomes[0] == ("label-pod", "done", None)
    assert outcomes[1] == ("delete-pod", "skipped", "pod belongs to a DaemonSet "
                           "(set allow_daemonset: true to delete it)")


def test_a_standalone_pod_is_skipped_when_the_table_says_so(run, cluster):
    cluster.api.add_pod("shop", "web", node="node-a", container_ids=(FULL_CID,),
                        owner_kind=None)
    outcomes = run(table_text(defaults="skip_standalone_pods: true"), netcat_event())
    assert outcomes[1][1] == "skipped" and outcomes[1][2].startswith("standalone pod")


def test_the_deletion_limit_skips_the_next_delete_and_a_404_gives_its_place_back(run, cluster):
    text = table_text(defaults="max_pod_deletions_per_minute: 1, coalesce_seconds: 0")
    cluster.api.fail("DELETE", POD, 404, 'pods "web" not found')
    assert run(text, netcat_event(uuid="a"))[1] == ("delete-pod", "already-done",
                                                    "already gone")
    assert run(text, netcat_event(uuid="b"))[1] == ("delete-pod", "done", None)
    cluster.api.add_pod("shop", "web", node="node-a", container_ids=(FULL_CID,))
    assert run(text, netcat_event(uuid="c"))[1] == (
        "delete-pod", "skipped", "pod deletion limit reached (1 per minute)")


def test_the_cordon_cap_counts_existing_cordons(run, cluster):
    cluster.api.add_node("node-c", unschedulable=True)
    assert run(table_text(), netcat_event())[2] == (
        "cordon-node", "skipped",
        "cordon limit reached (1 of at most 1 nodes already cordoned)")


def test_the_last_schedulable_node_is_never_cordoned(run, cluster):
    del cluster.api.nodes["node-b"]
    assert run(table_text(), netcat_event())[2] == (
        "cordon-node", "skipped", "would cordon the last schedulable node")
