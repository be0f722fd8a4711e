"""The shared Redis requires a password: the responder logs in with one read from a mounted
Secret file (RESPONDER_REDIS_PASSWORD_FILE), fails clearly with a wrong one, and never shows
it (settings log, errors, the event's recorded error)."""

from __future__ import annotations

import json
import time

import pytest
import redis

from responder.errors import ConfigError
from responder.settings import Settings

from .netcat import FULL_CID, delete_pod_table, netcat_event
from .redisserver import RedisServer
from .serving import free_port

PASSWORD = "s3cret-Redis-pw-4f9c"
OTHER = "0ther-Redis-pw-77aa"


@pytest.fixture(scope="module")
def server():
    with RedisServer("--requirepass", PASSWORD) as running:
        yield running


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "redis-password"
    path.write_text(PASSWORD + "\n")  # as a Secret created from a file often is
    return path


def admin(server) -> redis.Redis:
    return redis.Redis.from_url(server.url, password=PASSWORD)


def logged(logs, capsys) -> str:
    """Everything logged: records that reached caplog, and the app's own handler's output."""
    out, err = capsys.readouterr()
    return "\n".join([*(r.getMessage() for r in logs.records), out, err])


def never_shown(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


def test_the_responder_logs_in_with_the_password_file(server, password_file, kube, make_app,
                                                      make_table, logs, capsys):
    kube.api.add_node("node-a")
    kube.api.add_pod("shop", "web", node="node-a", container_ids=(FULL_CID,))
    app = make_app(make_table(delete_pod_table()), api_client=kube.api_client(),
                   redis_url=server.url, redis_password_file=str(password_file),
                   namespace="falco-responder")
    reply = app.test_client().post("/", data=json.dumps(netcat_event("u-1", pod="web")),
                                   content_type="application/json")
    assert reply.get_json()["status"] == "queued"
    app.extensions["worker"].run_pending()
    assert app.extensions["store"].status("u-1")["state"] == "done"
    assert admin(server).exists("falco-responder:seen:u-1")  # the state is in this Redis
    assert [c.method for c in kube.api.calls].count("DELETE") == 1
    text = logged(logs, capsys)
    assert "'RESPONDER_REDIS_PASSWORD': '***'" in text  # the settings line
    never_shown(text, PASSWORD)


@pytest.mark.parametrize("given", [OTHER, None], ids=["wrong", "none"])
def test_a_wrong_or_missing_password_is_a_config_error_that_never_shows_it(
        server, tmp_path, make_app, make_table, given, logs, capsys):
    settings = {"redis_url": server.url}
    if given:
        (tmp_path / "pw").write_text(given)
        settings["redis_password_file"] = str(tmp_path / "pw")
    with pytest.raises(ConfigError, match="RESPONDER_REDIS_PASSWORD") as raised:
        make_app(make_table(delete_pod_table()), **settings)
    assert OTHER not in str(raised.value) and PASSWORD not in str(raised.value)
    never_shown(logged(logs, capsys), OTHER, PASSWORD)


def test_redis_down_at_start_is_no_config_error(tmp_path, password_file, make_app, make_table,
                                                logs, capsys):
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    app = make_app(make_table(delete_pod_table()), redis_url=nobody,
                   redis_password_file=str(password_file))
    assert app.extensions["responder"]
    assert "not reachable at start" in logged(logs, capsys)


@pytest.mark.slow
def test_a_password_changed_under_a_running_replica_is_a_logged_retried_failure(
        server, password_file, kube, make_app, make_table, logs, capsys):
    kube.api.add_node("node-a")
    kube.api.add_pod("shop", "web", node="node-a", container_ids=(FULL_CID,))
    app = make_app(make_table(delete_pod_table()), api_client=kube.api_client(),
                   redis_url=server.url, redis_password_file=str(password_file),
                   namespace="falco-responder")
    client = admin(server)
    client.config_set("requirepass", OTHER)
    try:
        client.client_kill_filter(_type="normal", skipme=True)  # the replica must log in again
        reply = app.test_client().post("/", data=json.dumps(netcat_event("u-2", pod="web")),
                                       content_type="application/json")
        assert reply.status_code == 202
        store = app.extensions["store"]
        app.extensions["worker"].run_pending()
        status = store.status("u-2")
        assert status["state"] == "pending" and status["error"], status  # to be retried
        assert PASSWORD not in status["error"] and OTHER not in status["error"]
        never_shown(logged(logs, capsys), PASSWORD, OTHER)
    finally:
        client.config_set("requirepass", PASSWORD)
    deadline = time.monotonic() + 10
    while store.status("u-2")["state"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)  # the retry's delay
        app.extensions["worker"].run_pending()
    assert store.status("u-2")["state"] == "done"


def test_the_password_is_never_in_the_settings_repr_or_description(password_file):
    settings = Settings.of(redis_url="redis://127.0.0.1:6379/0",
                           redis_password_file=str(password_file),
                           redis_username="falco-responder")
    assert settings.storage.redis_password == PASSWORD
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings.describe())
    assert settings.describe()["RESPONDER_REDIS_USERNAME"] == "falco-responder"


def test_a_password_both_in_the_url_and_the_file_is_refused_without_showing_either(
        password_file):
    with pytest.raises(ConfigError, match="set only one") as raised:
        Settings.of(redis_url=f"redis://:{OTHER}@127.0.0.1:6379/0",
                    redis_password_file=str(password_file))
    assert OTHER not in str(raised.value) and PASSWORD not in str(raised.value)
