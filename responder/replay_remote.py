"""`responder replay --to URL`: send recorded events to a running responder, print its replies."""

from __future__ import annotations

import json
import os
from typing import TextIO

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
