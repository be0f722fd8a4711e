"""A DELETE the API carried out but whose answer was lost (a gateway's 504 after the pod was
deleted) counts against the deletion limit: the retry's 404 is our own deletion, not a pod
that was "already gone". The stand-in injects the lost answer; what a DELETE does on a real
kube-apiserver is in tests/test_apiserver_actions.py."""

import json

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from responder.actions import DeletePod, Outcome, Target
from responder.actions.pods import LOST_ANSWER, answer_may_be_lost
from responder.retry import RetryPolicy

from .netcat import FULL_CID, delete_pod_table, netcat_event


def pod_path(name: str) -> str:
    return f"/api/v1/namespaces/shop/pods/{name}"


def post(app, event) -> dict:
    reply = app.test_client().post("/", data=json.dumps(event), content_type="application/json")
    assert reply.status_code == 200, reply.get_json()
    (decision,) = reply.get_json()["decisions"]
    return decision


@pytest.fixture
def limited(kube, make_app, make_table):
    """An inline app that may delete 2 pods a minute; its retries do not sleep."""
    app = make_app(make_table(delete_pod_table(2)), api_client=kube.api_client(),
                   intake="inline")
    app.extensions["responder"].executor.retry = RetryPolicy(sleep=lambda s: None)
    return app


def test_deletions_whose_answer_was_lost_count_against_the_limit(kube, limited):
    decisions = []
    for i in range(6):
        kube.api.add_pod("shop", f"web-{i}", container_ids=(FULL_CID,))
        kube.api.fail("DELETE", pod_path(f"web-{i}"), 504, "gateway timeout", acted=True)
        decisions.append(post(limited, netcat_event(f"w-{i}", pod=f"web-{i}")))
    assert [(d["outcome"], d.get("reason")) for d in decisions[:2]] == [
        ("done", LOST_ANSWER)] * 2
    assert {d["outcome"] for d in decisions[2:]} == {"skipped"}
    assert all(d["reason"] == "pod deletion limit reached (2 per minute)" for d in decisions[2:])
    assert sorted(name for _, name in kube.api.pods) == [f"web-{i}" for i in range(2, 6)]


def test_a_pod_gone_before_our_first_delete_is_still_already_gone_and_frees_its_place(
        kube, limited):
    kube.api.add_pod("shop", "web-0", container_ids=(FULL_CID,))
    # Someone else deleted it between the guardrails' read and our DELETE: a plain 404.
    kube.api.fail("DELETE", pod_path("web-0"), 404, 'pods "web-0" not found')
    assert (post(limited, netcat_event("a", pod="web-0"))["outcome"]) == "already-done"
    for i in (1, 2):
        kube.api.add_pod("shop", f"web-{i}", container_ids=(FULL_CID,))
        assert post(limited, netcat_event(f"w-{i}", pod=f"web-{i}"))["outcome"] == "done"


def test_a_server_error_that_did_nothing_is_retried_and_counted_once(kube, limited):
    for i in range(3):
        kube.api.add_pod("shop", f"web-{i}", container_ids=(FULL_CID,))
        kube.api.fail("DELETE", pod_path(f"web-{i}"), 503, "unavailable")  # not acted
    outcomes = [post(limited, netcat_event(f"w-{i}", pod=f"web-{i}")) for i in range(3)]
    assert [(d["outcome"], d.get("reason")) for d in outcomes[:2]] == [("done", None)] * 2
    assert outcomes[2]["outcome"] == "skipped"


def test_a_pod_recreated_under_its_name_after_the_lost_answer_counts_ours_as_done(kube):
    """A StatefulSet recreates the pod between our DELETE (answer lost) and its retry: the
    uid precondition refuses the retry, and the deletion that did happen is ours."""
    old = kube.api.add_pod("shop", "db-0", container_ids=(FULL_CID,))
    kube.api.fail("DELETE", pod_path("db-0"), 504, "gateway timeout", acted=True)
    action = DeletePod(kube.api_client(), request_timeout=5.0)

    def recreate(_seconds: float) -> None:
        kube.api.add_pod("shop", "db-0", container_ids=(FULL_CID,))

    target = Target("shop", "db-0", pod_uid=old["metadata"]["uid"])
    result = RetryPolicy(sleep=recreate).call(action.attempts(target, {}))
    assert (result.outcome, result.reason) == (
        Outcome.DONE, f"{LOST_ANSWER}; a new pod has its name now")
    assert kube.api.pods[("shop", "db-0")]["metadata"]["uid"] != old["metadata"]["uid"]
    # A new call knows nothing of the lost answer: the same refusal is a replaced pod.
    assert action.attempts(target, {})().outcome is Outcome.SKIPPED


@pytest.mark.parametrize(("exc", "lost"), [
    (ApiException(status=504), True),
    (ApiException(status=500), True),
    (ApiException(status=429), False),
    (ApiException(status=409), False),
    (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), True),
    (urllib3.exceptions.ProtocolError("connection reset"), True),
    (urllib3.exceptions.MaxRetryError(
        None, "/", urllib3.exceptions.NewConnectionError(None, "refused")), False),
    (ConnectionRefusedError(), False),
])
def test_which_failures_may_have_deleted(exc, lost):
    assert answer_may_be_lost(exc) is lost

