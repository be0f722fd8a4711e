"""Run `responder serve` (real gunicorn, real sockets) in a subprocess for a test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(env: Mapping[str, str], ready: str | None = None, scheme: str = "http",
           verify=None, cert=None, timeout: float = 20.0) -> Iterator[str]:
    """Start the server and yield its base URL once `ready` (default /healthz) answers."""
    port = free_port()
    full_env = {**os.environ, "RESPONDER_HOST": "127.0.0.1", "RESPONDER_PORT": str(port),
                "RESPONDER_KUBE_CONFIG": "none", **env}
    proc = subprocess.Popen([sys.executable, "-m", "responder.cli", "serve"], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        _wait(proc, url + (ready or "/healthz"), verify, cert, timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _wait(proc, url, verify, cert, timeout) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            requests.get(url, timeout=1, verify=verify, cert=cert).close()
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError("server did not start in time")
