"""Safety properties: a stale or forged event never acts on the wrong object, never hides a
real one, and no outage or reload makes the responder act twice or skip an action."""

import json
import threading

import pytest
import redis

from responder.actions import Outcome, Target, default_registry
from responder.actions.pods import DeletePod
from responder.decisions import plan_response
from responder.errors import ConfigError
from responder.events import event_from_dict
from responder.retry import is_retryable
from responder.settings import Settings
from responder.table import parse_table
from responder.worker import decision_slots, prior_results

CID = "0123456789ab"
NETCAT = "Netcat Remote Code Execution in Container"
TABLE = f"""
defaults: {{dry_run: false, max_cordoned_nodes: 1}}
rules:
  - name: respond
    match: {{rules: ["{NETCAT}"]}}
    actions: [{{action: delete-pod}}, {{action: cordon-node}}]
"""


def event(uuid, container=CID, pod="web", hostname="falco-host"):
    return {"uuid": uuid, "rule": NETCAT, "priority": "Warning", "source": "syscall",
            "hostname": hostname,
            "output_fields": {"k8s.ns.name": "shop", "k8s.pod.name": pod,
                              "container.id": container}}


@pytest.fixture
def cluster(kube):
    kube.api.add_pod("shop", "web", node="node-a", container_ids=(CID + "f" * 52,))
    for name in ("node-a", "node-b", "node-c"):
        kube.api.add_node(name)
    return kube


@pytest.fixture
def queued(cluster, make_app, make_table):
    app = make_app(make_table(TABLE), api_client=cluster.api_client())

    def send(*events):
        client = app.test_client()
        for e in events:
            assert client.post("/", data=json.dumps(e)).status_code == 202
        app.extensions["worker"].run_pending()
        return [client.get(f"/events/{e['uuid']}").get_json() for e in events]
    return send


def outcomes(status):
    return [(d["action"], d["outcome"]) for d in status["decisions"]]


def test_stale_event_neither_deletes_nor_cordons_the_node_of_a_recreated_pod(cluster, queued):
    (status,) = queued(event("stale", container="0ld0ld0ld0ld"))
    assert outcomes(status) == [("delete-pod", "skipped"), ("cordon-node", "skipped")]
    assert all("container not in pod" in d["reason"] for d in status["decisions"])
    assert cluster.api.mutations() == []


def test_a_forged_event_does_not_coalesce_away_the_genuine_one(cluster, queued):
    forged, genuine = queued(event("forged", container="f0f0f0f0f0f0"), event("genuine"))
    assert {o for _, o in outcomes(forged)} == {"skipped"}
    assert outcomes(genuine) == [("delete-pod", "done"), ("cordon-node", "done")]


def test_a_dry_run_event_does_not_coalesce_away_a_live_one(cluster, make_app, make_table):
    app = make_app(make_table(TABLE.replace("dry_run: false", "dry_run: true")),
                   api_client=cluster.api_client())
    client = app.test_client()
    client.post("/", data=json.dumps(event("dry")))
    app.extensions["worker"].run_pending()
    app.extensions["responder"].table = make_table(TABLE)  # the operator arms the table
    client.post("/", data=json.dumps(event("live")))
    app.extensions["worker"].run_pending()
    assert outcomes(client.get("/events/live").get_json())[0] == ("delete-pod", "done")


def test_delete_names_the_verified_uid_and_a_replaced_pod_is_skipped(cluster):
    action = default_registry().instantiate(
        __import__("kubernetes").client.CoreV1Api(cluster.api_client()), 5)["delete-pod"]
    assert isinstance(action, DeletePod)
    result = action.run(Target("shop", "web", pod_uid="uid-of-the-old-pod"), {})
    assert (result.outcome, result.reason) == (
        Outcome.SKIPPED, "pod was replaced since the event (uid changed)")
    assert ("shop", "web") in cluster.api.pods


def test_concurrent_cordons_respect_the_limit(cluster, make_app, make_table):
    app = make_app(make_table(TABLE), api_client=cluster.api_client(), intake="inline")
    hosts = [event(f"h{i}", container="host", pod=None, hostname=f"node-{c}")
             for i, c in enumerate("abc")]
    threads = [threading.Thread(target=app.test_client().post, args=("/",),
                                kwargs={"data": json.dumps(h)}) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cordoned = [n for n, node in cluster.api.nodes.items() if node["spec"].get("unschedulable")]
    assert len(cordoned) == 1


def test_outcomes_of_an_earlier_try_follow_their_action_across_a_table_reload():
    registry = default_registry()
    before = parse_table("rules:\n  - {name: r, match: {rules: [x]}, actions: "
                         "[{action: label-pod, params: {labels: {a: b}}}, "
                         "{action: delete-pod}]}", "t", registry)
    after = parse_table("rules:\n  - {name: r, match: {rules: [x]}, actions: "
                        "[{action: delete-pod}, "
                        "{action: label-pod, params: {labels: {a: b}}}]}", "t", registry)
    e = event_from_dict({"rule": "x", "priority": "Notice", "output_fields": {}})
    first = decision_slots(plan_response(before, registry, e))
    recorded = [{"slot": first[0], "outcome": "done"}]  # the label ran, the delete did not
    prior = prior_results(plan_response(after, registry, e), recorded)
    assert {i: r.outcome for i, r in prior.items()} == {1: Outcome.DONE}


def test_redis_outage_counts_as_transient():
    assert is_retryable(redis.exceptions.ConnectionError("down"))
    assert is_retryable(redis.exceptions.TimeoutError("slow"))


def test_blank_uuid_falls_back_to_the_content_hash():
    a = event_from_dict({"uuid": "  ", "rule": "a", "priority": "Notice", "output_fields": {}})
    b = event_from_dict({"uuid": "", "rule": "b", "priority": "Notice", "output_fields": {}})
    assert a.uuid.strip() and a.uuid != b.uuid


def test_sender_chosen_rule_names_cannot_grow_the_metrics_without_bound(make_app, make_table):
    app = make_app(make_table(TABLE), max_body_bytes=4096)
    client = app.test_client()
    for i in range(520):
        client.post("/", data=json.dumps({"rule": f"r{i}", "priority": "Notice",
                                          "output_fields": {}}))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'rule="other"' in text
    assert text.count("responder_events_received_total{") == 501


def test_sender_chosen_sources_cannot_grow_the_metrics_without_bound(make_app, make_table):
    app = make_app(make_table(TABLE), max_body_bytes=4096)
    client = app.test_client()
    for i in range(60):
        client.post("/", data=json.dumps({"rule": "r", "priority": "Notice", "source": f"s{i}",
                                          "output_fields": {}}))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'source="other"' in text
    assert text.count("responder_events_received_total{") == 51


@pytest.mark.parametrize(("env", "message"), [
    ({"RESPONDER_LOG_LEVEL": "verbose"}, "RESPONDER_LOG_LEVEL: must be one of"),
    ({"RESPONDER_REDIS_URL": "http://user:hunter2@x"}, "RESPONDER_REDIS_URL: must start"),
])
def test_bad_settings_name_the_variable_and_hide_secrets(env, message):
    with pytest.raises(ConfigError, match=message) as info:
        Settings.from_env(env)
    assert "hunter2" not in str(info.value)


def test_undecodable_token_file_is_a_config_error(tmp_path):
    (tmp_path / "token").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        _ = Settings.from_env({"RESPONDER_AUTH_TOKEN_FILE": str(tmp_path / "token")}).token
