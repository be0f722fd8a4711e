"""Undo against a real kube-apiserver: live events go through the queue and the worker, then
`POST /events/<uuid>/undo` puts the cluster back as it was (labels restored, node schedulable,
policy and isolation label gone), says per action what it could not undo (a deletion, a
dry-run, a cordon that was there before, a label changed since, a detached pod staying
detached), is idempotent, and is recorded in the journal, an audit Event, the log and Slack."""

from __future__ import annotations

import io
import json
import threading
from contextlib import redirect_stdout

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from werkzeug.serving import make_server

from responder.actions.isolation import ISOLATED
from responder.cli import main
from responder.notify import SlackConfig
from responder.undo import REASON

from .netcat import FULL_CID, NETCAT, netcat_event
from .slackserver import SlackServer
from .test_manifests import MANIFESTS
from .test_rbac import ACCOUNT, USER, token_for

pytestmark = pytest.mark.slow

TOKEN = "undo-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONTAIN = """
defaults: {dry_run: false}
rules:
  - name: contain
    match: {rules: ["NETCAT"]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true", team: security}}
      - action: isolate-pod
        params: {detach: true}
      - action: cordon-node
  - name: watch
    dry_run: true
    match: {rules: ["NETCAT"]}
    actions:
      - action: label-pod
        params: {labels: {watched: "true"}}
  - name: kill
    match: {rules: ["Terminal shell in container"]}
    actions:
      - action: delete-pod
        params: {grace_period_seconds: 0}
""".replace("NETCAT", NETCAT)


@pytest.fixture
def slack():
    with SlackServer() as server:
        yield server


@pytest.fixture
def node(cluster):
    """node-a for the pod; node-b keeps node-a from being the last schedulable node."""
    cluster.add_node("node-b")
    return cluster.add_node("node-a").metadata.name


@pytest.fixture
def web(cluster, node):
    """Pod `web` of a ReplicaSet selecting app=web, with a label of its own set since."""
    cluster.add_pod("web", node=node, container_ids=(FULL_CID,))
    return cluster.core.patch_namespaced_pod("web", cluster.namespace,
                                             {"metadata": {"labels": {"team": "blue"}}})


@pytest.fixture
def app(apiserver, make_app, make_table, slack):
    """A queue-intake app with a token, Slack at the stand-in, JSON logs; the test runs the
    worker."""
    return make_app(make_table(CONTAIN), api_client=apiserver.api_client(), auth_token=TOKEN,
                    slack=SlackConfig(webhook_url=slack.webhook_url, timeout=2),
                    log_format="json")


def respond(app, event: dict) -> list[tuple[str, str]]:
    """Post the event, let the worker act on it; its (action, outcome)s."""
    reply = app.test_client().post("/", data=json.dumps(event), headers=AUTH,
                                   content_type="application/json")
    assert reply.status_code == 202, reply.get_json()
    app.extensions["worker"].run_pending()
    status = app.test_client().get(f"/events/{event['uuid']}", headers=AUTH).get_json()
    assert status["state"] == "done", status
    return [(d["action"], d["outcome"]) for d in status["decisions"]]


def undo(app, uuid: str, by: str | None = "alice", headers=AUTH):
    body = json.dumps({"by": by}) if by else ""
    return app.test_client().post(f"/events/{uuid}/undo", data=body, headers=headers,
                                  content_type="application/json")


def said(answer: dict) -> list[tuple[str, str, str | None]]:
    return [(a["action"], a["outcome"], a.get("reason")) for a in answer["actions"]]


def no_policy(cluster) -> bool:
    try:
        client.NetworkingV1Api(cluster.core.api_client).read_namespaced_network_policy(
            "isolate-web", cluster.namespace)
    except ApiException as exc:
        return exc.status == 404
    return False


def undo_events(cluster, namespace: str | None = None) -> list[client.CoreV1Event]:
    return [e for e in cluster.events(namespace) if e.reason == REASON]


def slack_undos(app, slack) -> list[dict]:
    app.extensions["responder"].notifier.flush(5)
    return [b for b in slack.state.bodies()
            if isinstance(b, dict) and "undone by" in b.get("text", "")]


def test_undo_puts_the_cluster_back_and_says_what_it_could_not(cluster, node, web, app,
                                                               slack, capsys):
    assert respond(app, netcat_event(namespace=cluster.namespace)) == [
        ("label-pod", "done"), ("isolate-pod", "done"), ("cordon-node", "done"),
        ("label-pod", "would-run")]
    pod = cluster.pod("web")
    assert pod.metadata.labels == {"team": "security", "quarantine": "true", ISOLATED: "web"}
    assert cluster.core.read_node(node).spec.unschedulable is True

    reply = undo(app, "u-1")
    assert reply.status_code == 200, reply.get_json()
    answer = reply.get_json()
    assert (answer["uuid"], answer["outcome"], answer["by"]) == ("u-1", "undone", "alice")
    assert said(answer) == [
        ("label-pod", "undone", None),
        ("isolate-pod", "undone", "the pod stays detached: its ReplicaSet's labels (app=web) "
         "are not put back, since a replacement runs"),
        ("cordon-node", "undone", None),
        ("label-pod", "not-undone", "nothing was done (would-run: dry-run)")]

    # Back as it was, but for the detached ReplicaSet label: team is blue again, our labels
    # are gone; the node takes pods; the policy is gone.
    assert cluster.pod("web").metadata.labels == {"team": "blue"}
    assert cluster.pod("web").metadata.uid == pod.metadata.uid
    assert not cluster.core.read_node(node).spec.unschedulable
    assert no_policy(cluster)

    # The journal keeps it, and GET /events/<uuid> shows it.
    status = app.test_client().get("/events/u-1", headers=AUTH).get_json()
    assert status["undos"] == [{k: answer[k] for k in ("outcome", "by", "at", "actions")}]

    # One audit Event per object put back: the pod (labels, isolation), the node.
    on_pod = undo_events(cluster)
    assert sorted((e.involved_object.kind, e.involved_object.name, e.involved_object.uid,
                   e.action, e.type) for e in on_pod) == [
        ("Pod", "web", pod.metadata.uid, "isolate-pod", "Normal"),
        ("Pod", "web", pod.metadata.uid, "label-pod", "Normal")]
    assert all("undone by alice" in e.message and "u-1" in e.message for e in on_pod)
    on_node = [e for e in cluster.node_events() if e.reason == REASON]
    assert [(e.involved_object.name, e.action) for e in on_node] == [(node, "cordon-node")]

    # One JSON log record, its `undo` key the journal's record with the event's uuid and rule.
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{")]
    (logged,) = [r["undo"] for r in records if "undo" in r]
    assert logged == {"uuid": "u-1", "rule": NETCAT, **status["undos"][0]}

    (message,) = slack_undos(app, slack)
    assert message["text"].endswith(f"pod {cluster.namespace}/web: undone by alice")
    section = message["attachments"][0]["blocks"][0]["text"]["text"]
    assert "• `cordon-node`: undone" in section
    assert "• `label-pod`: not undone: nothing was done (would-run: dry-run)" in section


def test_a_second_undo_is_already_undone_and_changes_nothing(cluster, web, app, slack,
                                                             apiserver):
    respond(app, netcat_event(namespace=cluster.namespace))
    first = undo(app, "u-1").get_json()
    mark = apiserver.audit_mark()
    reply = undo(app, "u-1", by="bob")
    assert reply.status_code == 200
    again = reply.get_json()
    assert (again["outcome"], again["by"]) == ("already-undone", "bob")
    earlier = f"already undone by alice at {first['at']}"
    assert said(again) == [
        ("label-pod", "already-undone", earlier), ("isolate-pod", "already-undone", earlier),
        ("cordon-node", "already-undone", earlier),
        ("label-pod", "not-undone", "nothing was done (would-run: dry-run)")]
    # Nothing asked of the cluster, no second audit Event, no second Slack message.
    assert apiserver.requests_since(mark) == []
    assert len(undo_events(cluster)) == 2
    assert len(slack_undos(app, slack)) == 1
    status = app.test_client().get("/events/u-1", headers=AUTH).get_json()
    assert [u["by"] for u in status["undos"]] == ["alice", "bob"]


def test_a_deletion_cannot_be_undone_and_the_answer_says_so(cluster, node, app):
    cluster.add_pod("shell", node=node, container_ids=(FULL_CID,))
    event = {**netcat_event(uuid="u-shell", pod="shell", namespace=cluster.namespace),
             "rule": "Terminal shell in container"}
    assert respond(app, event) == [("delete-pod", "done")]
    reply = undo(app, "u-shell", by=None)
    assert reply.status_code == 200
    answer = reply.get_json()
    assert (answer["outcome"], answer["by"]) == ("nothing-to-undo", "anonymous")
    assert said(answer) == [("delete-pod", "not-undone", "delete-pod cannot be undone")]
    assert cluster.pod("shell") is None


def test_a_node_cordoned_before_the_response_stays_cordoned(cluster, app):
    cordoned = cluster.add_node("node-a", unschedulable=True).metadata.name
    cluster.add_node("node-b")
    cluster.add_pod("web", node=cordoned, container_ids=(FULL_CID,))
    assert respond(app, netcat_event(namespace=cluster.namespace))[2] == (
        "cordon-node", "already-done")
    answer = undo(app, "u-1").get_json()
    assert said(answer)[2] == ("cordon-node", "not-undone", "the node was already cordoned "
                               "before the response; left cordoned")
    assert cluster.core.read_node(cordoned).spec.unschedulable is True


def test_a_node_uncordoned_since_is_already_undone(cluster, node, web, app):
    respond(app, netcat_event(namespace=cluster.namespace))
    cluster.core.patch_node(node, {"spec": {"unschedulable": False}})
    answer = undo(app, "u-1").get_json()
    assert said(answer)[2] == ("cordon-node", "already-undone",
                               "already undone (the node is schedulable)")


def test_a_label_changed_since_is_left_alone_and_named(cluster, web, app):
    respond(app, netcat_event(namespace=cluster.namespace))
    cluster.core.patch_namespaced_pod("web", cluster.namespace,
                                      {"metadata": {"labels": {"quarantine": "reviewed"}}})
    answer = undo(app, "u-1").get_json()
    assert said(answer)[0] == ("label-pod", "undone",
                               "changed since, left alone: quarantine (now 'reviewed')")
    assert cluster.pod("web").metadata.labels == {"team": "blue", "quarantine": "reviewed"}


def test_undo_of_a_pod_gone_since_says_so(cluster, web, app):
    respond(app, netcat_event(namespace=cluster.namespace))
    cluster.core.delete_namespaced_pod("web", cluster.namespace, grace_period_seconds=0)
    answer = undo(app, "u-1").get_json()
    assert answer["outcome"] == "undone"
    assert said(answer)[:2] == [
        ("label-pod", "not-undone", "pod no longer exists"),
        ("isolate-pod", "undone", "pod no longer exists; the pod stays detached: its "
         "ReplicaSet's labels (app=web) are not put back, since a replacement runs")]
    assert no_policy(cluster)  # no garbage collector here: undo deleted it
    # The pod gone, the Event goes on the policy deleted.
    assert [(e.involved_object.kind, e.involved_object.name, e.action)
            for e in undo_events(cluster)] == [("NetworkPolicy", "isolate-web", "isolate-pod")]


def test_a_policy_of_that_name_made_since_by_someone_else_is_left_alone(cluster, web, app):
    respond(app, netcat_event(namespace=cluster.namespace))
    policies = client.NetworkingV1Api(cluster.core.api_client)
    policies.delete_namespaced_network_policy("isolate-web", cluster.namespace)
    policies.create_namespaced_network_policy(cluster.namespace, {
        "metadata": {"name": "isolate-web"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}})
    answer = undo(app, "u-1").get_json()
    assert said(answer)[1] == (
        "isolate-pod", "undone", "the NetworkPolicy isolate-web is another one now (uid "
        "changed); left alone; the pod stays detached: its ReplicaSet's labels (app=web) are "
        "not put back, since a replacement runs")
    assert not no_policy(cluster)
    assert ISOLATED not in cluster.pod("web").metadata.labels


def test_refusals_are_json_with_their_status(cluster, web, app):
    assert undo(app, "u-1", headers={}).status_code == 401
    unknown = undo(app, "no-such-event")
    assert (unknown.status_code, unknown.get_json()) == (
        404, {"error": "no event no-such-event (never received, or past retention)"})
    # Received, not yet acted on: undo waits for the actions to have run.
    app.test_client().post("/", data=json.dumps(netcat_event(namespace=cluster.namespace)),
                           headers=AUTH, content_type="application/json")
    pending = undo(app, "u-1")
    assert pending.status_code == 409
    assert "undo it once its actions have run" in pending.get_json()["error"]
    app.extensions["worker"].run_pending()
    for body in ("[1]", "{\"by\": 3}", "{\"who\": \"x\"}", "not json"):
        bad = app.test_client().post("/events/u-1/undo", data=body, headers=AUTH)
        assert bad.status_code == 400 and "error" in bad.get_json(), body
    assert cluster.pod("web").metadata.labels[ISOLATED] == "web"  # nothing was undone


@pytest.fixture
def served_app(app):
    """The app on a real port, for the CLI."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


def run_cli(*argv: str) -> tuple[int, dict]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    return code, json.loads(out.getvalue())


def test_the_cli_undoes_through_a_running_responder(cluster, node, web, app, served_app,
                                                    monkeypatch):
    respond(app, netcat_event(namespace=cluster.namespace))
    code, printed = run_cli("undo", "u-1", "--to", served_app)
    assert (code, printed["status"]) == (1, 401)
    monkeypatch.setenv("RESPONDER_TOKEN", TOKEN)
    code, printed = run_cli("undo", "u-1", "--to", served_app + "/", "--as", "carol")
    assert (code, printed["status"]) == (0, 200)
    assert (printed["reply"]["outcome"], printed["reply"]["by"]) == ("undone", "carol")
    assert not cluster.core.read_node(node).spec.unschedulable
    code, printed = run_cli("undo", "no-such", "--to", served_app, "--token", TOKEN)
    assert (code, printed["status"]) == (1, 404)


@pytest.fixture(scope="module")
def deployed(apiserver):
    """manifests/ applied as an operator would (`kubectl apply -k`), as test_rbac does."""
    apiserver.kubectl("apply", "-k", str(MANIFESTS))
    return apiserver


def test_undo_needs_no_verb_the_cluster_role_lacks(cluster, node, web, deployed, make_app,
                                                   make_table, slack):
    """As the ServiceAccount manifests/rbac.yaml binds: every request of the response and of
    its undo (audit Events included) is allowed, and the cluster is back as it was."""
    app = make_app(make_table(CONTAIN), auth_token=TOKEN,
                   api_client=deployed.api_client(token=token_for(deployed, ACCOUNT)))
    respond(app, netcat_event(namespace=cluster.namespace))
    mark = deployed.audit_mark()
    assert undo(app, "u-1").get_json()["outcome"] == "undone"
    seen = deployed.requests_since(mark, user=USER)
    assert {(r.verb, r.code) for r in seen} >= {("patch", 200), ("delete", 200),
                                                ("create", 201)}
    assert all(200 <= r.code < 300 for r in seen), seen
    assert cluster.pod("web").metadata.labels == {"team": "blue"}
    assert not cluster.core.read_node(node).spec.unschedulable
    assert no_policy(cluster)
