"""Approvals across replicas: the shipped Deployment runs two, each with its own journal,
and Slack's clicks (through the Ingress) and `responder approve` (through the Service) reach
either. Not solved yet: a click on the replica that does not hold the event answers "no
event", and the event times out on the other. Kept as a strict xfail so it is seen, and
turns into a failure the day it works (then drop the mark)."""

from __future__ import annotations

import pytest

from . import test_approvals as approvals
from .test_approvals import click, post_event, status

slack, web, responder_app = approvals.slack, approvals.web, approvals.responder_app

pytestmark = pytest.mark.slow


@pytest.mark.xfail(strict=True, reason="each replica keeps its own journal: a verdict given "
                   "to the replica without the event is not passed on")
def test_a_click_on_the_other_replica_approves(cluster, web, responder_app):
    holder = responder_app(state="replica-a")
    other = responder_app(state="replica-b")
    post_event(holder, cluster.namespace)
    assert status(holder)["state"] == "awaiting-approval"
    reply = click(other, "approve").get_json()
    assert reply["ok"] is True, reply
