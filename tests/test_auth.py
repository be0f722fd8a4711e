"""Authenticating Falcosidekick: bearer token and mutual TLS, over real sockets too."""

import json

import pytest
import requests

from responder.errors import ConfigError
from responder.settings import Settings

from .certs import CA
from .conftest import recorded_events
from .serving import served

EVENT = json.dumps(recorded_events()[0])
ARMED = ("rules:\n  - {name: a, match: {rules: ['Terminal shell in container']},"
         " dry_run: false, actions: [{action: delete-pod}]}")


@pytest.fixture
def guarded(kube, make_table, make_app):
    kube.api.add_pod("default", "kubecon")
    kube.api.pods[("default", "kubecon")]["status"]["containerStatuses"] = [
        {"name": "c", "containerID": "containerd://ee97d9c4186f" + "0" * 52, "ready": True,
         "restartCount": 0, "image": "alpine", "imageID": ""}]
    kube.api.add_node("node-2")
    app = make_app(make_table(ARMED), api_client=kube.api_client(), auth_token="s3cret-token",
                   intake="inline")
    return app.test_client()


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic s3cret-token", "s3cret-token",
                                    "Bearer s3cret-token-and-more", "Bearer "])
def test_unauthenticated_events_get_401_and_never_reach_the_table(kube, guarded, header,
                                                                  capsys):
    headers = {"Authorization": header} if header else {}
    reply = guarded.post("/", data=EVENT, content_type="application/json", headers=headers)
    assert reply.status_code == 401
    assert reply.get_json() == {"error": "missing or wrong bearer token in the Authorization "
                                         "header"}
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert kube.api.calls == []
    assert "decision" not in capsys.readouterr().out
    assert 'responder_requests_rejected_total{status="401"} 1.0' in \
        guarded.get("/metrics").get_data(as_text=True)


def test_right_token_is_accepted(kube, guarded):
    for scheme in ("Bearer", "bearer"):
        reply = guarded.post("/events", data=EVENT, content_type="application/json",
                             headers={"Authorization": f"{scheme} s3cret-token"})
        assert reply.status_code == 200
    assert ("DELETE", "/api/v1/namespaces/default/pods/kubecon") in [
        (c.method, c.path) for c in kube.api.calls]


def test_probes_stay_open_with_auth_on(guarded):
    assert guarded.get("/healthz").status_code == 200


def test_token_is_read_from_a_mounted_file(tmp_path, make_app, make_table):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    app = make_app(make_table(ARMED), auth_token_file=str(token_file)).test_client()
    ok = app.post("/", data=EVENT, headers={"Authorization": "Bearer from-file"})
    assert ok.status_code == 202
    assert app.post("/", data=EVENT).status_code == 401


def test_no_auth_logs_a_loud_warning(make_app, make_table, capsys):
    make_app(make_table(ARMED))
    assert "NO AUTHENTICATION" in capsys.readouterr().out


def test_token_never_appears_in_logs_or_repr(make_app, make_table, capsys):
    settings = Settings.of(auth_token="s3cret-token")
    make_app(make_table(ARMED), auth_token="s3cret-token")
    assert "s3cret-token" not in capsys.readouterr().out
    assert "s3cret-token" not in repr(settings) + str(settings.describe())


@pytest.mark.parametrize(("env", "message"), [
    ({"RESPONDER_AUTH_TOKEN": "a", "RESPONDER_AUTH_TOKEN_FILE": "/etc/hostname"}, "set only one"),
    ({"RESPONDER_TLS_CERT_FILE": "/etc/hostname"}, "set both"),
    ({"RESPONDER_TLS_CLIENT_CA_FILE": "/etc/hostname"}, "needs RESPONDER_TLS_CERT_FILE"),
    ({"RESPONDER_AUTH_TOKEN_FILE": "/nonexistent/token"}, "cannot read /nonexistent/token"),
])
def test_auth_settings_errors_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


# --- real sockets: gunicorn serving HTTPS and requiring client certificates ---------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca, other = CA(directory, "ca"), CA(directory, "other-ca")
    return {
        "ca": ca.files.cert,
        "server": ca.issue("server", "falco-responder", server=True),
        "client": ca.issue("client", "falcosidekick"),
        "expired": ca.issue("expired", "falcosidekick", expired=True),
        "foreign": other.issue("foreign", "falcosidekick"),
    }


@pytest.fixture(scope="module")
def mtls_server(pki):
    env = {"RESPONDER_TLS_CERT_FILE": str(pki["server"].cert),
           "RESPONDER_TLS_KEY_FILE": str(pki["server"].key),
           "RESPONDER_TLS_CLIENT_CA_FILE": str(pki["ca"]),
           "RESPONDER_AUTH_TOKEN": "s3cret-token",
           "RESPONDER_STATE_DIR": str(pki["ca"].parent / "state")}
    good = (str(pki["client"].cert), str(pki["client"].key))
    with served(env, scheme="https", verify=str(pki["ca"]), cert=good) as url:
        yield url


def send(url, pki, client=None, token="s3cret-token"):
    cert = (str(pki[client].cert), str(pki[client].key)) if client else None
    return requests.post(url + "/", data=EVENT, timeout=10, verify=str(pki["ca"]), cert=cert,
                         headers={"Authorization": f"Bearer {token}",
                                  "Content-Type": "application/json"})


@pytest.mark.slow
def test_mtls_accepts_a_client_cert_from_our_ca(mtls_server, pki):
    reply = send(mtls_server, pki, "client")
    assert reply.status_code == 202
    assert reply.json()["rule"] == "Terminal shell in container"


@pytest.mark.slow
def test_mtls_with_valid_cert_still_needs_the_token(mtls_server, pki):
    assert send(mtls_server, pki, "client", token="wrong").status_code == 401


@pytest.mark.slow
@pytest.mark.parametrize("client", [None, "foreign", "expired"])
def test_mtls_rejects_missing_foreign_and_expired_certs_in_the_handshake(mtls_server, pki,
                                                                         client):
    with pytest.raises(requests.exceptions.ConnectionError):
        send(mtls_server, pki, client)


@pytest.mark.slow
def test_plain_http_to_the_tls_port_fails(mtls_server):
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(mtls_server.replace("https", "http") + "/", data=EVENT, timeout=5)
