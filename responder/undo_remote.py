"""`responder undo UUID --to URL`: ask a running responder to undo an event, print its answer."""

from __future__ import annotations

import json
import os
from typing import TextIO
from urllib.parse import quote

import requests

TIMEOUT_SECONDS = 60  # the undo runs while the request waits: a few API calls per action
TOKEN_VARIABLE = "RESPONDER_UNDO_TOKEN"


def post_undo(uuid: str, url: str, token: str | None, by: str | None, out: TextIO) -> int:
    """POST /events/<uuid>/undo to the responder at `url` (its base URL) and print the
    status and answer as one JSON line; exit status 0 when it answered 200 and nothing
    failed, else 1."""
    token = token or os.environ.get(TOKEN_VARIABLE)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    endpoint = f"{url.rstrip('/')}/events/{quote(uuid, safe='')}/undo"
    body = json.dumps({"by": by} if by else {})
    try:
        response = requests.post(endpoint, data=body, headers=headers, timeout=TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        out.write(json.dumps({"status": None,
                              "error": f"{type(exc).__name__}: cannot reach {url}"}) + "\n")
        return 1
    try:
        answer = response.json()
    except ValueError:
        answer = {"text": response.text[:500]}
    out.write(json.dumps({"status": response.status_code, "reply": answer}) + "\n")
    failed = not isinstance(answer, dict) or answer.get("outcome") == "failed"
    return 0 if response.status_code == 200 and not failed else 1
