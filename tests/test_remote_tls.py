"""The CLI's HTTP commands against a responder that requires client certificates, as the
shipped manifests do (`responder serve` over real TLS): `--cert/--key/--cacert` (or their
variables) get through, and without a certificate the error gives OpenSSL's reason and what
to add, not a bare "cannot reach"."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from responder.cli import main

from .certs import CA
from .serving import served
from .slowclients import event_body

pytestmark = pytest.mark.slow
EVENTS, OPERATOR = "events-token", "operator-token"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("remote-pki")
    ca = CA(directory, "ca")
    return {"ca": str(ca.files.cert), "server": ca.issue("server", "falco-responder", True),
            "client": ca.issue("client", "operator")}


@pytest.fixture(scope="module")
def server(pki, tmp_path_factory) -> Iterator[str]:
    env = {"RESPONDER_TLS_CERT_FILE": str(pki["server"].cert),
           "RESPONDER_TLS_KEY_FILE": str(pki["server"].key),
           "RESPONDER_TLS_CLIENT_CA_FILE": pki["ca"], "RESPONDER_AUTH_TOKEN": EVENTS,
           "RESPONDER_OPERATOR_TOKEN": OPERATOR,
           "RESPONDER_STATE_DIR": str(tmp_path_factory.mktemp("remote-state"))}
    client = (str(pki["client"].cert), str(pki["client"].key))
    with served(env, scheme="https", verify=pki["ca"], cert=client) as url:
        yield url


def tls_args(pki) -> list[str]:
    return ["--cert", str(pki["client"].cert), "--key", str(pki["client"].key),
            "--cacert", pki["ca"]]


def printed(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]


def finished(server: str, pki, uuid: str) -> None:
    cert = (str(pki["client"].cert), str(pki["client"].key))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reply = requests.get(f"{server}/events/{uuid}", verify=pki["ca"], cert=cert,
                             headers={"Authorization": f"Bearer {EVENTS}"}, timeout=5)
        if reply.status_code == 200 and reply.json()["state"] == "done":
            return
        time.sleep(0.2)
    raise AssertionError(f"{uuid} not done")


def test_replay_and_undo_reach_a_responder_that_requires_client_certificates(
        server, pki, tmp_path, capsys):
    body = json.loads(event_body())
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(body) + "\n")
    assert main(["replay", str(events), "--to", server + "/", "--token", EVENTS,
                 *tls_args(pki)]) == 0
    assert printed(capsys)[0]["status"] == 202
    finished(server, pki, body["uuid"])
    assert main(["undo", body["uuid"], "--to", server, "--token", OPERATOR,
                 *tls_args(pki)]) == 0
    [reply] = printed(capsys)
    assert reply["status"] == 200 and reply["reply"]["outcome"] == "nothing-to-undo"


def test_the_variables_stand_for_the_options(server, pki, monkeypatch, capsys):
    monkeypatch.setenv("RESPONDER_CLIENT_CERT", str(pki["client"].cert))
    monkeypatch.setenv("RESPONDER_CLIENT_KEY", str(pki["client"].key))
    monkeypatch.setenv("RESPONDER_CA_FILE", pki["ca"])
    monkeypatch.setenv("RESPONDER_TOKEN", OPERATOR)
    assert main(["approve", "no-such-event", "--to", server]) == 1
    assert printed(capsys)[0]["status"] == 404  # through TLS and the token: only unknown


def test_without_a_client_certificate_the_error_says_why_and_what_to_add(server, pki,
                                                                          capsys):
    assert main(["undo", "any", "--to", server, "--token", OPERATOR, "--cacert",
                 pki["ca"]]) == 1
    [reply] = printed(capsys)
    assert reply["status"] is None
    # TLS 1.3 refuses the missing certificate after the handshake: an SSLError or a reset,
    # whichever the client sees first, with OpenSSL's reason and the hint.
    assert f"cannot reach {server}/events/any/undo: " in reply["error"]
    assert reply["error"].endswith("(a responder requiring client certificates needs "
                                   "--cert/--key)")
    assert OPERATOR not in reply["error"]


def test_a_key_without_its_certificate_or_an_unreadable_file_is_a_usage_error(pki, capsys,
                                                                               tmp_path):
    assert main(["undo", "any", "--to", "https://127.0.0.1:1", "--key",
                 str(pki["client"].key)]) == 2
    assert "--key (RESPONDER_CLIENT_KEY) needs --cert" in capsys.readouterr().err
    assert main(["undo", "any", "--to", "https://127.0.0.1:1", "--cacert",
                 str(tmp_path / "missing.crt")]) == 2
    assert "--cacert" in capsys.readouterr().err


def test_certificates_for_a_plain_http_url_are_refused_before_the_token_is_sent(pki, capsys):
    assert main(["undo", "any", "--to", "http://127.0.0.1:1", "--token", OPERATOR,
                 *tls_args(pki)]) == 2
    err = capsys.readouterr().err
    assert "are for https:// URLs" in err and OPERATOR not in err


@pytest.mark.parametrize("what", ["directory", "not-pem", "wrong-key"])
def test_a_certificate_openssl_cannot_load_is_a_usage_error(pki, tmp_path, capsys, what):
    other = CA(tmp_path, "other").issue("client", "someone")
    cert, key = {"directory": (str(tmp_path), None),
                 "not-pem": (str(tmp_path / "other.crt").replace("other.crt", "x.pem"), None),
                 "wrong-key": (str(pki["client"].cert), str(other.key))}[what]
    (tmp_path / "x.pem").write_text("not a certificate\n")
    args = ["--cert", cert, *(["--key", key] if key else [])]
    assert main(["undo", "any", "--to", "https://127.0.0.1:1", *args]) == 2
    assert f"--cert {cert}" in capsys.readouterr().err


def test_a_refused_connection_gets_no_certificate_hint(pki, capsys):
    assert main(["undo", "any", "--to", "https://127.0.0.1:1", "--token", OPERATOR]) == 1
    [reply] = printed(capsys)
    assert "cannot reach https://127.0.0.1:1/events/any/undo: " in reply["error"]
    assert "--cert" not in reply["error"]


def test_a_key_from_the_environment_goes_only_with_its_certificate(pki, monkeypatch, capsys):
    monkeypatch.setenv("RESPONDER_CLIENT_KEY", str(pki["client"].key))
    assert main(["undo", "any", "--to", "https://127.0.0.1:1", "--key",
                 str(pki["client"].key)]) == 2  # a key given, no certificate anywhere
    capsys.readouterr()
    # A certificate given without its key: the variable's key is not paired with it.
    assert main(["undo", "any", "--to", "https://127.0.0.1:1", "--cert",
                 str(pki["client"].cert)]) == 2
    assert "a key in a file of its own goes with --key" in capsys.readouterr().err
