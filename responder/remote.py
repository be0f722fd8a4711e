"""The commands that talk to a running responder over HTTP and print its replies:
`responder replay --to URL`, `responder approve|reject` and `responder undo`.

All send the same bearer token: `--token`, else RESPONDER_TOKEN (RESPONDER_REPLAY_TOKEN, its
older name, still works)."""

from __future__ import annotations

import getpass
import json
import os
from typing import TextIO
from urllib.parse import quote

import requests

TIMEOUT_SECONDS = 10
#: An undo runs while the request waits: a few API calls per action, or a relay to the
#: replica holding the event.
UNDO_TIMEOUT_SECONDS = 60
TOKEN_VARIABLES = ("RESPONDER_TOKEN", "RESPONDER_REPLAY_TOKEN")


def client_token(token: str | None) -> str | None:
    """The bearer token to send: the one given, else the first variable that is set."""
    return token or next((os.environ[v] for v in TOKEN_VARIABLES if os.environ.get(v)), None)


def _headers(token: str | None, content_type: str = "application/json") -> dict[str, str]:
    headers = {"Content-Type": content_type}
    token = client_token(token)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def post_events(stream: TextIO, url: str, token: str | None, out: TextIO) -> int:
    """POST each line as Falcosidekick would; exit status 1 if any event was not accepted."""
    headers = {**_headers(token, "application/json; charset=utf-8"),
               "User-Agent": "Falcosidekick"}
    status = 0
    with requests.Session() as session:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            reply = _post(session, url, line, headers)
            reply["line"] = number
            if reply.get("status") not in (200, 201, 202, 204):
                status = 1
            out.write(json.dumps(reply) + "\n")
    return status


def _post(session: requests.Session, url: str, line: str, headers: dict,
          timeout: float = TIMEOUT_SECONDS) -> dict:
    try:
        response = session.post(url, data=line.encode("utf-8"), headers=headers,
                                timeout=timeout)
    except requests.RequestException as exc:
        return {"status": None, "error": f"{type(exc).__name__}: cannot reach {url}"}
    try:
        body = response.json()
    except ValueError:
        body = {"text": response.text[:500]}
    return {"status": response.status_code, "reply": body}


def post_decision(base_url: str, uuid: str, verb: str, by: str | None, token: str | None,
                  out: TextIO) -> int:
    """POST /events/<uuid>/approve (or /reject) naming the approver; print the reply. Exit
    status 0 when decided, 1 otherwise (unknown event, decided already, refused)."""
    url = f"{base_url.rstrip('/')}/events/{quote(uuid, safe='')}/{verb}"
    body = json.dumps({"by": by or _login_name()})
    with requests.Session() as session:
        reply = _post(session, url, body, _headers(token))
    out.write(json.dumps(reply) + "\n")
    return 0 if reply.get("status") == 200 else 1


def post_undo(base_url: str, uuid: str, by: str | None, token: str | None,
              out: TextIO) -> int:
    """POST /events/<uuid>/undo naming who undoes it; print the reply. Exit status 0 when
    it answered 200 and no action's undo failed, else 1."""
    url = f"{base_url.rstrip('/')}/events/{quote(uuid, safe='')}/undo"
    body = json.dumps({"by": by or _login_name()})
    with requests.Session() as session:
        reply = _post(session, url, body, _headers(token), UNDO_TIMEOUT_SECONDS)
    out.write(json.dumps(reply) + "\n")
    answer = reply.get("reply")
    failed = not isinstance(answer, dict) or answer.get("outcome") == "failed"
    return 0 if reply.get("status") == 200 and not failed else 1


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's random uid)
        return f"uid {os.getuid()}"
