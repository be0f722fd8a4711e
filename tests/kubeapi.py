"""A stand-in Kubernetes API for FAULT INJECTION ONLY: 500s, 429 with Retry-After, refused
connections (stop/start), slow answers, and requests counted per attempt.

Anything about how Kubernetes itself behaves (what an action changes, 404s, 409 on a uid
precondition, RBAC, Event validation, the guardrails' reads) is tested against a real
kube-apiserver instead (tests/apiserver.py, the `apiserver` and `cluster` fixtures): this
stand-in only imitates it, and would agree with our own mistakes."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes import client

_POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/?]+)$")
_NODE = re.compile(r"^/api/v1/nodes/([^/?]+)$")
_EVENTS = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")
# What a real API server answers on /version (the client's model requires every field).
VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "gitCommit": "0" * 40,
           "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
           "compiler": "gc", "platform": "linux/amd64"}
_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
            504: "Timeout"}


@dataclass
class Call:
    method: str
    path: str
    content_type: str | None
    body: Any
    #: The status answered, set once the request was handled (None while in flight).
    status: int | None = None


@dataclass
class Fault:
    status: int
    message: str
    times: int = 1
    headers: dict[str, str] = field(default_factory=dict)
    #: Carry the request out first, then answer the error: the answer was lost on its way.
    acted: bool = False


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class KubeAPI:
    """State and behaviour; the HTTP handler below only translates."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict] = {}
        self.nodes: dict[str, dict] = {}
        self.events: list[dict] = []
        self.calls: list[Call] = []
        self.faults: dict[tuple[str, str], list[Fault]] = {}
        self.lock = threading.Lock()
        self._uid = 0
        #: Seconds every request waits before it is handled, like a slow API server.
        self.delay = 0.0

    # --- fixtures' helpers -----------------------------------------------------------
    def add_pod(self, namespace: str, name: str, node: str = "node-1",
                container_ids: tuple[str, ...] = (), labels: dict | None = None,
                owner_kind: str | None = "ReplicaSet") -> dict:
        statuses = [{"name": f"c{i}", "containerID": f"containerd://{cid}", "ready": True,
                     "restartCount": 0, "image": "img", "imageID": ""}
                    for i, cid in enumerate(container_ids)]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "uid": self._next_uid(),
                            "labels": dict(labels or {})},
               "spec": {"nodeName": node, "containers": [{"name": "c0", "image": "img"}]},
               "status": {"phase": "Running", "containerStatuses": statuses}}
        if owner_kind:
            pod["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner_kind,
                                                   "name": f"{name}-owner", "uid": "owner-uid",
                                                   "controller": True}]
        self.pods[(namespace, name)] = pod
        return pod

    def add_node(self, name: str, unschedulable: bool = False) -> dict:
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "uid": self._next_uid()},
                "spec": {"unschedulable": unschedulable} if unschedulable else {}}
        self.nodes[name] = node
        return node

    def fail(self, method: str, path: str, status: int, message: str = "", times: int = 1,
             headers: dict[str, str] | None = None, acted: bool = False) -> None:
        """Answer the next `times` matching requests with an error Status; `acted`: after
        carrying them out (a gateway timeout whose request reached the server)."""
        fault = Fault(status, message or _REASONS.get(status, "error"), times, headers or {},
                      acted)
        self.faults.setdefault((method, path), []).append(fault)

    def mutations(self) -> list[tuple[str, str, Any]]:
        """(method, path, body) of every request that is not a read."""
        return [(c.method, c.path, c.body) for c in self.calls if c.method != "GET"]

    def _next_uid(self) -> str:
        self._uid += 1
        return f"00000000-0000-0000-0000-{self._uid:012d}"

    # --- request handling ------------------------------------------------------------
    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            fault = self._take_fault(method, path)
            if fault:
                if fault.acted:
                    self._route(method, path, body)
                return fault.status, status_body(fault.status, fault.message), fault.headers
            return self._route(method, path, body)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        queue = self.faults.get((method, path))
        if not queue:
            return None
        fault = queue[0]
        fault.times -= 1
        if fault.times <= 0:
            queue.pop(0)
        return fault

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        if path == "/version" or path == "/version/":
            return 200, VERSION, {}
        if path == "/api/v1/nodes" and method == "GET":
            return 200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {},
                         "items": list(self.nodes.values())}, {}
        if m := _POD.match(path):
            return self._object(self.pods, (m.group(1), m.group(2)), "pods", method, body)
        if m := _NODE.match(path):
            return self._object(self.nodes, m.group(1), "nodes", method, body)
        if (m := _EVENTS.match(path)) and method == "POST":
            event = merge_patch(body, {"metadata": {"uid": self._next_uid()}})
            self.events.append(event)
            return 201, event, {}
        return 404, status_body(404, f"the server could not find the requested resource {path}"), {}

    def _object(self, store: dict, key: Any, kind: str, method: str, body: Any):
        name = key[1] if isinstance(key, tuple) else key
        if key not in store:
            return 404, status_body(404, f'{kind} "{name}" not found'), {}
        if method == "GET":
            return 200, store[key], {}
        if method == "PATCH":
            store[key] = merge_patch(store[key], body)
            return 200, store[key], {}
        if method == "DELETE":
            wanted = ((body or {}).get("preconditions") or {}).get("uid")
            if wanted and wanted != store[key]["metadata"].get("uid"):
                return 409, status_body(409, f"Precondition failed: UID in precondition: "
                                        f"{wanted}, UID in object meta: "
                                        f"{store[key]['metadata'].get('uid')}"), {}
            return 200, store.pop(key), {}
        return 405, status_body(405, "method not allowed"), {}


def status_body(code: int, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": _REASONS.get(code, "Unknown"), "code": code}


class _Handler(BaseHTTPRequestHandler):
    api: KubeAPI
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle's algorithm and delayed
    # ACKs stall every answer by ~40 ms.
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        path = self.path.split("?", 1)[0]
        call = Call(self.command, path, self.headers.get("Content-Type"), body)
        self.api.calls.append(call)
        if self.api.delay:
            time.sleep(self.api.delay)
        status, payload, headers = self.api.handle(self.command, path, body)
        call.status = status
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

    def log_message(self, *args: Any) -> None:  # keep test output readable
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.open_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.open_lock:
            self.server.open_connections.discard(self.connection)
        # The client may be gone (killed, or the server was stopped under it).
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            super().handle()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        self.open_connections: set[socket.socket] = set()
        self.open_lock = threading.Lock()
        super().__init__(address, handler)

    def drop_connections(self) -> None:
        """Cut every kept-alive connection, as a dying API server would."""
        with self.open_lock:
            for conn in self.open_connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class KubeServer:
    """Runs a KubeAPI on 127.0.0.1 in a thread; `api_client()` gives a real client for it."""

    def __init__(self) -> None:
        self.api = KubeAPI()
        self.handler = type("Handler", (_Handler,), {"api": self.api})
        self.httpd: _Server | None = _Server(("127.0.0.1", 0), self.handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> KubeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """Go down: new connections are refused and open ones are cut."""
        if self.httpd is None:
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd.drop_connections()
        self.thread.join(5)
        self.httpd = None

    def start(self) -> None:
        """Come back on the same port (and with the same state) after `stop`."""
        self.httpd = _Server(("127.0.0.1", self.port), self.handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def api_client(self, retries: int | None = 0) -> client.ApiClient:
        configuration = client.Configuration(host=self.url)
        # No silent urllib3 retries: tests count every request.
        configuration.retries = retries
        return client.ApiClient(configuration)
