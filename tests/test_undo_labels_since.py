"""Undoing label-pod never removes a label someone set again since: after the responder's
label was removed and set once more by someone else (to the same value, their own
decision), undo leaves it and says who has it; the labels still ours are put back. On the
real kube-apiserver, which records who set each label last (managedFields)."""

from __future__ import annotations

import pytest

from .netcat import netcat_event
from .test_apiserver_undo import TOKEN, node, respond, said, undo, web

pytestmark = pytest.mark.slow
node, web = node, web  # pod `web` (labels app=web, team=blue) on node-a
LABEL = """
defaults: {dry_run: false}
rules:
  - name: mark
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true", team: security}}
"""


@pytest.fixture
def app(apiserver, make_app, make_table):
    return make_app(make_table(LABEL), api_client=apiserver.api_client(), auth_token=TOKEN)


def kubectl_label(cluster, labels: dict) -> None:
    """`kubectl label pod web ...`: a merge patch under kubectl's field manager."""
    cluster.core.patch_namespaced_pod("web", cluster.namespace, {"metadata": {"labels": labels}},
                                      field_manager="kubectl-label")


def test_a_label_set_again_by_someone_since_stays(cluster, web, app):
    assert respond(app, netcat_event(namespace=cluster.namespace)) == [("label-pod", "done")]
    kubectl_label(cluster, {"quarantine": None})
    kubectl_label(cluster, {"quarantine": "true"})  # an analyst's own quarantine, now
    (action, outcome, reason) = said(undo(app, "u-1").get_json())[0]
    assert (action, outcome) == ("label-pod", "undone")
    assert "quarantine (set again since by kubectl-label)" in reason
    assert cluster.pod("web").metadata.labels == {"app": "web", "team": "blue",
                                                  "quarantine": "true"}


def test_labels_still_ours_are_put_back(cluster, web, app):
    respond(app, netcat_event(namespace=cluster.namespace))
    kubectl_label(cluster, {"quarantine": "true"})  # the same value: changes nothing, owns nothing
    assert said(undo(app, "u-1").get_json())[0] == ("label-pod", "undone", None)
    assert cluster.pod("web").metadata.labels == {"app": "web", "team": "blue"}
