"""Hostile clients against `responder serve` over real sockets, for the tests and for the
bench's hostile-clients section: connections that send a little and stall, a genuine event
posted meanwhile, and the serving worker's memory.

What the tests hold the server to is that a genuine event is not held up by the stalled
clients: it is answered while they are still held, long before their deadline. How fast it is
answered (the one-second promise) depends on the machine, and is the bench's to measure."""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from responder.bridge import HEADER_SECONDS

from .serving import free_port

DATA = Path(__file__).parent / "data"

# A server that served connections in turn, or waited for the stalled ones, would answer the
# genuine event only when the stalled clients are dropped, at HEADER_SECONDS: half of it is
# far from both that and a loaded machine's second.
NOT_HELD_UP_SECONDS = HEADER_SECONDS / 2
PROMISED_SECONDS = 1.0  # what the docs promise on a machine with CPU to spare; the bench checks
# What one worker may grow by under each flood. The cap (256 connections) times what each
# connection may hold: asyncio's 64 KiB TLS read buffer (16 MiB) or 32 KiB of headers (8
# MiB); bodies: the 32 MiB budget plus 256 x 64 KiB read ahead. The rest is Python's own
# objects. 100 MiB over a ~85 MiB worker stays well inside the
# Deployment's 384 MiB (before: +300 to +390 MiB, and it never came back).
GROWTH_MIB = 100

PARTIAL_HEADERS = b"POST / HTTP/1.1\r\nHost: x\r\n"
PARTIAL_BODY = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{\"rule\": ")
# A TLS record header announcing a 512-byte handshake message, then the start of it.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 16
# Nearly the most headers a connection may send and then stall in (HEADER_BYTES, 32 KiB).
BIG_PARTIAL_HEADERS = PARTIAL_HEADERS + b"".join(
    b"X-Pad-%d: %s\r\n" % (i, b"a" * 3990) for i in range(8))
BODY_HEAD = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 1048000\r\n\r\n")


def event_body() -> bytes:
    """The first recorded event under a uuid of its own."""
    first = (DATA / "recorded-events.jsonl").read_text().splitlines()[0]
    return json.dumps({**json.loads(first), "uuid": str(uuid.uuid4())}).encode()


def address(url: str) -> tuple[str, int]:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    return host, int(port)


def genuine_post(url: str, context: ssl.SSLContext | None = None,
                 timeout: float = 3.0) -> tuple[int, float]:
    """POST one real event on a new connection: (status, seconds to the answer)."""
    host, port = address(url)
    conn = (http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
            if context else http.client.HTTPConnection(host, port, timeout=timeout))
    start = time.monotonic()
    try:
        conn.request("POST", "/", body=event_body(),
                     headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        reply.read()
        return reply.status, time.monotonic() - start
    except OSError as exc:  # a timeout included: say it as a failed promise, not an error
        return -1, time.monotonic() - start if not isinstance(exc, TimeoutError) else timeout
    finally:
        conn.close()


def assert_not_held_up(url: str, context: ssl.SSLContext | None = None) -> float:
    """A genuine event is accepted without waiting for the stalled clients; its seconds."""
    status, seconds = genuine_post(url, context, timeout=HEADER_SECONDS)
    assert status == 202 and seconds < NOT_HELD_UP_SECONDS, (status, seconds)
    return seconds


def flood(stack: ExitStack, url: str, count: int, first_bytes: bytes) -> list[socket.socket]:
    """`count` connections that send `first_bytes` and stall. The server may close some
    (that is the point): a refused send is not an error here."""
    socks = []
    for _ in range(count):
        sock = stack.enter_context(socket.create_connection(address(url), timeout=5))
        with suppress(OSError):
            sock.sendall(first_bytes)
        socks.append(sock)
    return socks


def raise_open_files(wanted: int) -> tuple[int, int] | None:
    """Lets this process hold `wanted` sockets; the limits to restore, or None when the hard
    limit is below `wanted`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        return None
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    return soft, hard


@dataclass
class Server:
    url: str
    worker: int  # the gunicorn worker's pid: the process that holds the connections
    log: Path


def _children(pid: int) -> list[tuple[int, bytes]]:
    found = []
    for child in filter(str.isdigit, os.listdir("/proc")):
        with suppress(OSError):
            stat = Path(f"/proc/{child}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append((int(child), Path(f"/proc/{child}/cmdline").read_bytes()))
    return found


def _serving_worker(cli: int) -> int:
    """`responder serve` starts gunicorn's arbiter (and the queue worker) as children; the
    arbiter's child is the worker that serves."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for arbiter, cmdline in _children(cli):
            if b"serve" in cmdline:
                workers = _children(arbiter)
                if workers:
                    return workers[0][0]
        time.sleep(0.1)
    raise AssertionError("no gunicorn worker found")


@contextmanager
def serve(directory: Path, scheme: str = "http", context: ssl.SSLContext | None = None,
          soft_files: int | None = None, **env: str) -> Iterator[Server]:
    """`responder serve` logging to a file (a pipe nobody reads would stall a chatty server),
    in a process group of its own, killed whole at the end."""
    port = free_port()
    log = directory / "server.log"
    full_env = {**os.environ, "RESPONDER_HOST": "127.0.0.1", "RESPONDER_PORT": str(port),
                "RESPONDER_KUBE_CONFIG": "none", "RESPONDER_STATE_DIR": str(directory / "state"),
                **env}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "responder.cli", "serve"], env=full_env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=soft_files and (lambda: _lower_soft(soft_files)))
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while genuine_post(url, context, timeout=1)[0] != 202:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        yield Server(url, _serving_worker(proc.pid), log)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _lower_soft(files: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (files, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmRSS:")) / 1024
