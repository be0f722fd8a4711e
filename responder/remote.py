"""The commands that talk to a running responder over HTTP and print its replies:
`responder replay --to URL`, `responder approve|reject` and `responder undo`.

All send the same bearer token (`--token`, else RESPONDER_TOKEN; RESPONDER_REPLAY_TOKEN, its
older name, still works) and, for a responder that requires client certificates (the shipped
manifests do), the same certificate (`--cert`/`--key`, else RESPONDER_CLIENT_CERT and
RESPONDER_CLIENT_KEY) and CA to trust (`--cacert`, else RESPONDER_CA_FILE)."""

from __future__ import annotations

import getpass
import json
import os
import ssl
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import quote

import requests

from .errors import ConfigError

TIMEOUT_SECONDS = 10
#: An undo runs while the request waits: a few API calls per action, or a relay to the
#: replica holding the event.
UNDO_TIMEOUT_SECONDS = 60
TOKEN_VARIABLES = ("RESPONDER_TOKEN", "RESPONDER_REPLAY_TOKEN")
CERT_VARIABLE, KEY_VARIABLE, CA_VARIABLE = \
    "RESPONDER_CLIENT_CERT", "RESPONDER_CLIENT_KEY", "RESPONDER_CA_FILE"


def client_token(token: str | None) -> str | None:
    """The bearer token to send: the one given, else the first variable that is set."""
    return token or next((os.environ[v] for v in TOKEN_VARIABLES if os.environ.get(v)), None)


@dataclass(frozen=True)
class Remote:
    """How to reach a running responder: bearer token, client certificate, CA to trust."""

    token: str | None = None
    cert: str | None = None
    key: str | None = None
    cacert: str | None = None

    def __repr__(self) -> str:
        return f"Remote(token={'***' if self.token else None}, cert={self.cert!r})"

    @classmethod
    def of(cls, url: str, token: str | None = None, cert: str | None = None,
           key: str | None = None, cacert: str | None = None) -> Remote:
        """The options given, else their variables (a key from RESPONDER_CLIENT_KEY only with
        the certificate from RESPONDER_CLIENT_CERT), checked before anything is sent:
        ConfigError for a key without its certificate, certificates for a plain http:// URL
        (the token would go in the clear), or a file OpenSSL cannot load."""
        if not cert:
            cert, key = os.environ.get(CERT_VARIABLE) or None, key or os.environ.get(KEY_VARIABLE)
        cacert = cacert or os.environ.get(CA_VARIABLE) or None
        if key and not cert:
            raise ConfigError(f"--key ({KEY_VARIABLE}) needs --cert ({CERT_VARIABLE}) too")
        if (cert or cacert) and not url.lower().startswith("https://"):
            raise ConfigError(f"--cert and --cacert are for https:// URLs, not {url}: over "
                              "plain HTTP the token would go in the clear")
        _check_loadable(cert, key or None, cacert)
        return cls(client_token(token), cert, key or None, cacert)

    def tls(self) -> dict[str, object]:
        """requests' `cert` and `verify` for each request: set on a Session, `verify` would
        lose to REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE where those are set."""
        options: dict[str, object] = {}
        if self.cert:
            options["cert"] = (self.cert, self.key) if self.key else self.cert
        if self.cacert:
            options["verify"] = self.cacert
        return options

    def headers(self, content_type: str = "application/json") -> dict[str, str]:
        headers = {"Content-Type": content_type}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


def post_events(stream: TextIO, url: str, remote: Remote, out: TextIO) -> int:
    """POST each line as Falcosidekick would; exit status 1 if any event was not accepted."""
    headers = {**remote.headers("application/json; charset=utf-8"), "User-Agent": "Falcosidekick"}
    status = 0
    with requests.Session() as session:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            reply = _post(session, url, line, remote, headers)
            reply["line"] = number
            if reply.get("status") not in (200, 201, 202, 204):
                status = 1
            out.write(json.dumps(reply) + "\n")
    return status


def _check_loadable(cert: str | None, key: str | None, cacert: str | None) -> None:
    """ConfigError when OpenSSL cannot load the certificate (with its key) or the CA."""
    context = ssl.create_default_context()
    try:
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:  # OpenSSL's reason names no key material
        with_key = f" with --key {key}" if key else ""
        hint = "" if key else " (a key in a file of its own goes with --key)"
        raise ConfigError(f"--cert {cert}{with_key}: cannot load it: {exc}{hint}") from None
    try:
        if cacert:
            context.load_verify_locations(cacert)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--cacert {cacert}: cannot load it: {exc}") from None


def _post(session: requests.Session, url: str, line: str, remote: Remote,
          headers: dict | None = None, timeout: float = TIMEOUT_SECONDS) -> dict:
    try:
        response = session.post(url, data=line.encode("utf-8"),
                                headers=headers or remote.headers(), timeout=timeout,
                                **remote.tls())
    except requests.RequestException as exc:
        return {"status": None, "error": _unreachable(url, exc, remote)}
    except OSError as exc:  # requests' own: a REQUESTS_CA_BUNDLE that names no file
        return {"status": None, "error": f"{type(exc).__name__}: {exc}"}
    try:
        body = response.json()
    except ValueError:
        body = {"text": response.text[:500]}
    return {"status": response.status_code, "reply": body}


def _unreachable(url: str, exc: requests.RequestException, remote: Remote) -> str:
    """Why `url` did not answer. A TLS failure says OpenSSL's reason and what may be
    missing: a server that wants a client certificate (TLS 1.3 refuses it after the
    handshake: a reset here) and one whose CA is not trusted look alike otherwise."""
    error = f"{type(exc).__name__}: cannot reach {url}"
    if not url.lower().startswith("https:"):
        return error
    cause = _innermost(exc)
    error = f"{error}: {str(cause)[:300]}"
    if not isinstance(cause, ssl.SSLError | ConnectionResetError | ConnectionAbortedError):
        return error  # refused, no such host: nothing about certificates
    hints = [hint for hint, given in (
        ("a responder requiring client certificates needs --cert/--key", remote.cert),
        ("one with a private CA needs --cacert", remote.cacert)) if not given]
    return error + (f" ({'; '.join(hints)})" if hints else "")


def _innermost(exc: BaseException) -> BaseException:
    """The deepest cause (OpenSSL's error, under requests' and urllib3's)."""
    seen: set[int] = set()
    try:
        while id(exc) not in seen:
            seen.add(id(exc))
            deeper = next((e for e in (getattr(exc, "reason", None), exc.__cause__, *exc.args)
                           if isinstance(e, BaseException)), None)
            if deeper is None:
                break
            exc = deeper
    except Exception:  # noqa: BLE001 - an odd exception's property: keep what we have
        pass
    return exc


def post_decision(base_url: str, uuid: str, verb: str, by: str | None, remote: Remote,
                  out: TextIO) -> int:
    """POST /events/<uuid>/approve (or /reject) naming the approver; print the reply. Exit
    status 0 when decided, 1 otherwise (unknown event, decided already, refused)."""
    reply = _post_as(base_url, uuid, verb, by, remote, out)
    return 0 if reply.get("status") == 200 else 1


def post_undo(base_url: str, uuid: str, by: str | None, remote: Remote,
              out: TextIO) -> int:
    """POST /events/<uuid>/undo naming who undoes it; print the reply. Exit status 0 when
    it answered 200 and no action's undo failed, else 1."""
    reply = _post_as(base_url, uuid, "undo", by, remote, out, UNDO_TIMEOUT_SECONDS)
    answer = reply.get("reply")
    failed = not isinstance(answer, dict) or answer.get("outcome") == "failed"
    return 0 if reply.get("status") == 200 and not failed else 1


def _post_as(base_url: str, uuid: str, verb: str, by: str | None, remote: Remote,
             out: TextIO, timeout: float = TIMEOUT_SECONDS) -> dict:
    """POST /events/<uuid>/<verb> naming who asks (`by`, else the login name); the reply,
    printed as a JSON line."""
    url = f"{base_url.rstrip('/')}/events/{quote(uuid, safe='')}/{verb}"
    body = json.dumps({"by": by or _login_name()})
    with requests.Session() as session:
        reply = _post(session, url, body, remote, timeout=timeout)
    out.write(json.dumps(reply) + "\n")
    return reply


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's random uid)
        return f"uid {os.getuid()}"
