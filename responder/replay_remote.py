"""`responder replay --to URL` and `responder approve|reject --to URL`: talk to a running
responder over HTTP, print its replies."""

from __future__ import annotations

import getpass
import json
import os
from typing import TextIO
from urllib.parse import quote

import requests

TIMEOUT_SECONDS = 10


def post_events(stream: TextIO, url: str, token: str | None, out: TextIO) -> int:
    """POST each line as Falcosidekick would; exit status 1 if any event was not accepted."""
    token = token or os.environ.get("RESPONDER_REPLAY_TOKEN")
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Falcosidekick"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
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


def _post(session: requests.Session, url: str, line: str, headers: dict) -> dict:
    try:
        response = session.post(url, data=line.encode("utf-8"), headers=headers,
                                timeout=TIMEOUT_SECONDS)
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
    token = token or os.environ.get("RESPONDER_REPLAY_TOKEN")
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = f"{base_url.rstrip('/')}/events/{quote(uuid, safe='')}/{verb}"
    body = json.dumps({"by": by or _login_name()})
    with requests.Session() as session:
        reply = _post(session, url, body, headers)
    out.write(json.dumps(reply) + "\n")
    return 0 if reply.get("status") == 200 else 1


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's random uid)
        return f"uid {os.getuid()}"
