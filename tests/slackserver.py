"""A local stand-in for Slack: incoming webhooks and the Web API's chat.postMessage over real
HTTP, with recorded requests and queued failures (429 + Retry-After, 5xx, slow answers); and
Slack's side of interactivity: button clicks as Slack signs and sends them."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

WEBHOOK_PATH = "/services/T000/B000/secret-webhook-part"
POST_MESSAGE_PATH = "/api/chat.postMessage"
UPDATE_PATH = "/api/chat.update"
EPHEMERAL_PATH = "/api/chat.postEphemeral"
CHANNEL = "C123"
MESSAGE_TS = "1.0"


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: Any
    #: The status the fake answered (or will answer) this request with.
    status: int = 200


@dataclass
class Fault:
    """How to answer one request instead of succeeding: a status, or a delay before success."""

    status: int = 200
    retry_after: int | None = None
    delay: float = 0.0


class SlackState:
    """What the fake Slack received and what it will answer next."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        #: Set at shutdown so slow answers stop waiting and no thread outlives the test.
        self.closing = threading.Event()

    def fail(self, status: int, times: int = 1, retry_after: int | None = None) -> None:
        """Answer the next `times` requests with `status` (429 gets a Retry-After header)."""
        if status == 429 and retry_after is None:
            retry_after = 1
        with self.lock:
            self.faults.extend(Fault(status, retry_after) for _ in range(times))

    def slow(self, seconds: float, times: int = 1) -> None:
        """Wait `seconds` before answering the next `times` requests (for client timeouts)."""
        with self.lock:
            self.faults.extend(Fault(delay=seconds) for _ in range(times))

    def bodies(self) -> list[Any]:
        """Bodies of the requests that were answered successfully, in arrival order."""
        with self.lock:
            return [r.body for r in self.requests if r.status == 200]

    def answered(self, path: str) -> list[Any]:
        """Bodies of the successful requests to one Web API method's path."""
        with self.lock:
            return [r.body for r in self.requests if r.status == 200 and r.path == path]

    def record(self, request: Request) -> Fault:
        with self.lock:
            self.requests.append(request)
            fault = self.faults.pop(0) if self.faults else Fault()
            request.status = fault.status
            return fault


class _Handler(BaseHTTPRequestHandler):
    state: SlackState

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        request = Request(self.path, {k.lower(): v for k, v in self.headers.items()},
                          _decode(raw))
        fault = self.state.record(request)
        if fault.delay and self.state.closing.wait(fault.delay):
            return
        # The client may have given up (timeout) and closed the connection.
        with contextlib.suppress(OSError):
            self._answer(fault)

    def _answer(self, fault: Fault) -> None:
        webhook = self.path.startswith("/services/")
        if fault.status != 200:
            payload = "rate_limited" if fault.status == 429 else "internal_error"
            body = payload if webhook else json.dumps({"ok": False, "error": payload})
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            self._send(fault.status, body, headers)
        elif webhook:
            self._send(200, "ok")
        elif self.path in (POST_MESSAGE_PATH, UPDATE_PATH):
            self._send(200, json.dumps({"ok": True, "channel": CHANNEL, "ts": MESSAGE_TS}))
        elif self.path == EPHEMERAL_PATH:
            self._send(200, json.dumps({"ok": True, "message_ts": "1.0"}))
        else:
            self._send(404, json.dumps({"ok": False, "error": "unknown_method"}))

    def _send(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        data = text.encode()
        self.send_response(status)
        is_json = text.startswith("{")
        self.send_header("Content-Type", "application/json" if is_json else "text/html")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:  # keep test output readable
        pass


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


class SlackServer:
    """Runs the fake Slack on 127.0.0.1 in a thread; use as a context manager."""

    def __init__(self) -> None:
        self.state = SlackState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.webhook_url = self.url + WEBHOOK_PATH
        self.api_url = self.url + "/api/"
        # A short poll interval keeps shutdown (and so each test) quick.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> SlackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.state.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def click_payload(action_id: str, value: str, user_id: str = "U0ALICE", user_name: str = "alice",
                  channel: str = CHANNEL, message_ts: str = MESSAGE_TS) -> dict:
    """A block_actions payload as Slack sends it for a button click (the fields we read, and
    the others Slack sends beside them)."""
    return {
        "type": "block_actions", "team": {"id": "T0TEAM", "domain": "example"},
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": "T0TEAM"},
        "api_app_id": "A0APP", "token": "deprecated-verification-token",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel,
                      "is_ephemeral": False},
        "trigger_id": "1.2.3", "channel": {"id": channel, "name": "security"},
        "message": {"type": "message", "ts": message_ts, "text": "approval needed"},
        "response_url": "https://hooks.slack.com/actions/T0TEAM/1/abc",
        "actions": [{"type": "button", "action_id": action_id, "block_id": "approval",
                     "value": value, "action_ts": f"{time.time():.6f}",
                     "text": {"type": "plain_text", "text": action_id.capitalize()}}],
    }


def signed_interaction(secret: str, payload: dict, timestamp: int | None = None
                       ) -> tuple[bytes, dict[str, str]]:
    """The body and headers of Slack's interaction request: the payload form-encoded as
    `payload=<json>`, signed v0=HMAC-SHA256(secret, "v0:{timestamp}:{body}")."""
    body = urlencode({"payload": json.dumps(payload)})
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{stamp}:{body}".encode(), hashlib.sha256)
    return body.encode(), {"Content-Type": "application/x-www-form-urlencoded",
                           "X-Slack-Request-Timestamp": stamp,
                           "X-Slack-Signature": f"v0={digest.hexdigest()}"}
