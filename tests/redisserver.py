"""A real `redis-server` (the Debian package) on loopback for a test: no persistence, a free
port, its files in a temporary directory; skipped on a machine without it, unless in CI."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import pytest

from .serving import free_port


def redis_server_binary() -> str:
    """The redis-server path; skips the test without one, but fails in CI (.ci/run sets CI)."""
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server not installed (Debian package redis-server, see .ci/apt-packages)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class RedisServer:
    """Runs redis-server on 127.0.0.1; use as a context manager. `url` is its redis:// URL."""

    def __init__(self, *args: str) -> None:
        """`args`: more redis-server arguments, e.g. "--requirepass", "..."."""
        self.args = args
        self.binary = redis_server_binary()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self._dir.name, "--protected-mode", "yes",
             "--daemonize", "no", "--loglevel", "warning", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            self._wait_for_ping(10.0)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
        self._dir.cleanup()

    def ping(self) -> bool:
        """True when the server answers PING (spoken as RESP, no client library needed), or
        asks for a password first: it is up."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def _wait_for_ping(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.proc.stdout.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited: {output}")
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING in time")
