"""A kubelet's log endpoint, enough for the test apiserver to fetch container logs through:
HTTPS on 127.0.0.1 (the apiserver does not verify a kubelet's certificate unless told to),
`GET /containerLogs/<namespace>/<pod>/<container>` honouring tailLines, limitBytes and
previous as the kubelet does. A node points the apiserver at it by its status (InternalIP
127.0.0.1, daemonEndpoints.kubeletEndpoint.Port)."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .certs import CA


class FakeKubelet:
    """Serves `logs[(container, previous)]` (bytes); records each request's path and query."""

    def __init__(self, directory: Path, logs: dict[tuple[str, bool], bytes]):
        self.logs = logs
        self.requests: list[tuple[str, dict[str, str]]] = []
        ca = CA(directory, "kubelet-ca")
        issued = ca.issue("kubelet", "127.0.0.1", server=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(issued.cert, issued.key)
        handler = type("Handler", (_Handler,), {"kubelet": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> FakeKubelet:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def node_status(self) -> dict:
        """The node status patch that sends the apiserver's log requests here."""
        return {"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                           "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}}}}

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, bytes]:
        parts = path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            return 404, b"not found"
        key = (parts[3], query.get("previous") == "true")
        if key not in self.logs:
            return 400, b"previous terminated container not found"
        lines = self.logs[key].splitlines(keepends=True)
        if "tailLines" in query:
            lines = lines[-int(query["tailLines"]):]
        data = b"".join(lines)
        return 200, data[:int(query["limitBytes"])] if "limitBytes" in query else data


class _Handler(BaseHTTPRequestHandler):
    kubelet: FakeKubelet

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.kubelet.requests.append((url.path, query))
        status, body = self.kubelet.answer(url.path, query)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # keep test output readable
        pass
