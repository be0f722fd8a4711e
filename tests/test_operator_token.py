"""RESPONDER_OPERATOR_TOKEN keeps acting on events from whoever sends them: with it set, the
events token (the one in Falcosidekick's config) sends events and reads them, and is refused
403 on approve, reject, undo and the console login; the operator token does those, on the
real kube-apiserver, and sends no events."""

from __future__ import annotations

import json
import re

import pytest

from responder.errors import ConfigError
from responder.settings import Settings

from .netcat import FULL_CID, netcat_event

pytestmark = pytest.mark.slow
EVENTS = "events-token-in-falcosidekick"
OPERATOR = "operator-token-for-people"
TABLE = """
defaults: {dry_run: false}
rules:
  - name: label-on-approval
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    approval: {required: true, timeout: 15m, on_timeout: skip}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true"}}
"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def app(cluster, apiserver, make_app, make_table):
    node = cluster.add_node("node-a").metadata.name
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    return make_app(make_table(TABLE), api_client=apiserver.api_client(), auth_token=EVENTS,
                    operator_token=OPERATOR)


def post_event(app, namespace: str, token: str) -> int:
    reply = app.test_client().post("/", data=json.dumps(netcat_event("ev-1", namespace=namespace)),
                                   headers=bearer(token))
    app.extensions["worker"].run_pending()
    return reply.status_code


def test_the_events_token_cannot_act_and_the_operator_token_can(cluster, app):
    client = app.test_client()
    assert post_event(app, cluster.namespace, OPERATOR) == 403  # people send no events
    assert post_event(app, cluster.namespace, EVENTS) == 202
    for token in (EVENTS, OPERATOR):
        read = client.get("/events/ev-1", headers=bearer(token))
        assert read.status_code == 200 and read.get_json()["state"] == "awaiting-approval"
    for verb in ("approve", "reject", "undo"):
        refused = client.post(f"/events/ev-1/{verb}", json={"by": "mallory"},
                              headers=bearer(EVENTS))
        assert refused.status_code == 403, verb
        assert "RESPONDER_OPERATOR_TOKEN" in refused.get_json()["error"]
        assert client.post(f"/events/ev-1/{verb}", json={"by": "x"}).status_code == 401
    assert client.get("/events/ev-1", headers=bearer(EVENTS)).get_json()[
        "state"] == "awaiting-approval"

    approved = client.post("/events/ev-1/approve", json={"by": "carol"},
                           headers=bearer(OPERATOR))
    assert approved.status_code == 200 and approved.get_json()["approval"]["by"] == "carol"
    app.extensions["worker"].run_pending()
    assert cluster.pod("web").metadata.labels["quarantine"] == "true"
    undone = client.post("/events/ev-1/undo", json={"by": "carol"}, headers=bearer(OPERATOR))
    assert undone.status_code == 200, undone.get_json()
    assert "quarantine" not in cluster.pod("web").metadata.labels
    exposition = client.get("/metrics").get_data(as_text=True)
    assert 'responder_requests_rejected_total{status="403"} 4.0' in exposition


def log_in(client, token: str):
    form = client.get("/ui/login").get_data(as_text=True)
    assert "RESPONDER_OPERATOR_TOKEN" in form  # it says which token it takes
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    return client.post("/ui/login", data={"token": token, "csrf": csrf, "next": "/ui/table"})


def test_the_console_logs_in_with_the_operator_token_only(app):
    client = app.test_client()
    assert log_in(client, EVENTS).status_code == 401
    assert client.get("/ui/table").status_code == 302  # still not logged in
    assert log_in(client, OPERATOR).status_code == 302
    assert client.get("/ui/table").status_code == 200
    table = {"text": TABLE, "last": 10}
    script = app.test_client()
    assert script.post("/ui/table/check", json=table, headers=bearer(EVENTS)).status_code == 401
    assert script.post("/ui/table/check", json=table,
                       headers=bearer(OPERATOR)).status_code == 200


def test_only_the_operator_token_leaves_sending_events_open_and_says_so(make_app, make_table,
                                                                       capsys):
    app = make_app(make_table(TABLE), operator_token=OPERATOR)
    warned = [line for line in capsys.readouterr().out.splitlines() if "NO AUTHENTICATION" in line]
    assert app.test_client().post("/", data=json.dumps(netcat_event("ev-2"))).status_code == 202
    assert app.test_client().post("/events/ev-2/undo").status_code == 401
    # What came in, and what was done about it, is for people only.
    assert app.test_client().get("/events/ev-2").status_code == 401
    assert app.test_client().get("/events/ev-2", headers=bearer(OPERATOR)).status_code == 200
    assert warned and "undo" not in warned[0]
    html = app.test_client().get("/ui/login").get_data(as_text=True)
    assert "NO AUTHENTICATION for events" in html


def test_without_an_operator_token_the_start_up_log_says_who_can_free_a_pod(
        make_app, make_table, capsys):
    make_app(make_table(TABLE), auth_token=EVENTS)
    assert "free an isolated pod. Set RESPONDER_OPERATOR_TOKEN" in capsys.readouterr().out
    make_app(make_table(TABLE), auth_token=EVENTS, operator_token=OPERATOR)
    assert "Set RESPONDER_OPERATOR_TOKEN" not in capsys.readouterr().out


def test_the_operator_token_is_a_masked_secret_that_must_differ(tmp_path):
    with pytest.raises(ConfigError, match="RESPONDER_OPERATOR_TOKEN: must differ"):
        Settings.of(auth_token=EVENTS, operator_token=EVENTS)
    path = tmp_path / "operator-token"
    path.write_text(OPERATOR + "\n")
    settings = Settings.of(auth_token=EVENTS, operator_token_file=str(path))
    assert settings.auth.operator_token == OPERATOR
    assert OPERATOR not in repr(settings) and OPERATOR not in json.dumps(settings.describe())
