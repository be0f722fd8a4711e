"""Hostile clients against the real server (`responder serve`, real sockets, real TLS): slow
or idle connections never delay a genuine event, and cost bounded memory."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pytest

from .certs import CA
from .serving import free_port, served
from .slowclients import (
    PARTIAL_BODY,
    PARTIAL_CLIENT_HELLO,
    PARTIAL_HEADERS,
    address,
    assert_not_held_up,
    event_body,
    flood,
    genuine_post,
)

pytestmark = pytest.mark.slow

CONNECTIONS = 100


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("slow-state")
    with served({"RESPONDER_STATE_DIR": str(state)}) as url:
        yield url


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("slow-pki")
    ca = CA(directory, "ca")
    return {"ca": ca.files.cert, "server": ca.issue("server", "falco-responder", server=True),
            "client": ca.issue("client", "falcosidekick")}


@pytest.fixture(scope="module")
def mtls_server(pki, tmp_path_factory) -> Iterator[str]:
    env = {"RESPONDER_TLS_CERT_FILE": str(pki["server"].cert),
           "RESPONDER_TLS_KEY_FILE": str(pki["server"].key),
           "RESPONDER_TLS_CLIENT_CA_FILE": str(pki["ca"]),
           "RESPONDER_STATE_DIR": str(tmp_path_factory.mktemp("slow-mtls-state"))}
    client = (str(pki["client"].cert), str(pki["client"].key))
    with served(env, scheme="https", verify=str(pki["ca"]), cert=client) as url:
        yield url


@contextmanager
def hostile(url: str, first_bytes: bytes, count: int = CONNECTIONS) -> Iterator[list]:
    """`count` connections that each send `first_bytes` and then nothing, held open."""
    with ExitStack() as stack:
        socks = flood(stack, url, count, first_bytes)
        time.sleep(0.3)  # let the server take them all in before the genuine event
        yield socks


@pytest.mark.parametrize("first_bytes", [b"", PARTIAL_HEADERS, PARTIAL_BODY],
                         ids=["silent", "partial-headers", "partial-body"])
def test_a_hundred_slow_connections_do_not_delay_a_genuine_event(server, first_bytes):
    with hostile(server, first_bytes):
        assert_not_held_up(server)
        assert_not_held_up(server)


def test_a_hundred_idle_keep_alives_do_not_delay_a_genuine_event(server):
    host, port = address(server)
    with ExitStack() as stack:
        for _ in range(CONNECTIONS):
            conn = http.client.HTTPConnection(host, port, timeout=5)
            stack.callback(conn.close)
            conn.request("GET", "/healthz")
            assert conn.getresponse().read()  # answered, and the connection kept open
        assert_not_held_up(server)


def mtls_context(pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.load_cert_chain(str(pki["client"].cert), str(pki["client"].key))
    return context


@pytest.mark.parametrize("first_bytes", [b"", PARTIAL_CLIENT_HELLO],
                         ids=["silent", "partial-client-hello"])
def test_a_hundred_unfinished_tls_handshakes_do_not_delay_a_genuine_event(mtls_server, pki,
                                                                          first_bytes):
    with hostile(mtls_server, first_bytes):
        assert_not_held_up(mtls_server, mtls_context(pki))


def test_keep_alive_connection_serves_events_again_after_an_idle_pause(server):
    """Falcosidekick reuses one connection, idle up to 90 s between events: the server must
    not have closed it meanwhile (it would lose the event sent as it closed)."""
    conn = http.client.HTTPConnection(*address(server), timeout=5)
    try:
        ports = set()
        for pause in (0, 0, 3):  # 3 s: past gunicorn's default keep-alive of 2 s
            time.sleep(pause)
            conn.request("POST", "/", body=event_body(),
                         headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            assert reply.status == 202 and json.loads(reply.read())["status"] == "queued"
            assert reply.getheader("Connection", "").lower() != "close"
            ports.add(conn.sock.getsockname()[1])
        assert len(ports) == 1  # one connection carried all three
    finally:
        conn.close()


def rss_mib(port: int) -> float:
    """Resident memory of every process of the server on `port` (found by its environment)."""
    total_kib = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RESPONDER_PORT={port}".encode() not in environ:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue  # gone, or not ours
        total_kib += next(int(line.split()[1]) for line in status.splitlines()
                          if line.startswith("VmRSS:"))
    return total_kib / 1024


def test_a_hundred_slow_connections_cost_bounded_memory_and_delay_nothing(server):
    """Each connection has sent 4 KiB of headers and stalls: the server holds their bytes
    (400 KiB) and little more, and still answers at once."""
    port = address(server)[1]
    assert_not_held_up(server)
    before = rss_mib(port)
    headers = PARTIAL_HEADERS + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 90) for i in range(40))
    with hostile(server, headers):
        assert_not_held_up(server)
        grown = rss_mib(port) - before
    print(f"RSS {before:.1f} MiB, +{grown:.1f} MiB with {CONNECTIONS} stalled connections")
    assert grown < 16, f"{grown:.1f} MiB for {CONNECTIONS} stalled connections"


@contextmanager
def own_server(state_dir: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`responder serve` in a process group of its own, so a stop that hangs fails the test
    and leaves nothing behind (a killed parent would orphan its children)."""
    port = free_port()
    env = {**os.environ, "RESPONDER_HOST": "127.0.0.1", "RESPONDER_PORT": str(port),
           "RESPONDER_KUBE_CONFIG": "none", "RESPONDER_STATE_DIR": str(state_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "responder.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while genuine_post(url, timeout=1)[0] != 202:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield proc, url
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_stop_with_idle_and_stalled_connections_open_takes_seconds_not_minutes(tmp_path):
    """Falcosidekick keeps a connection open between events, and a hostile client may stall
    its body: a rollout's SIGTERM must still stop the server in seconds (gunicorn would kill
    the worker at its 30 s graceful timeout, before the shutdown hook drains)."""
    with own_server(tmp_path) as (proc, url), ExitStack() as stack:
        conn = http.client.HTTPConnection(*address(url), timeout=5)
        stack.callback(conn.close)
        conn.request("POST", "/", body=event_body(), headers={"Content-Type": "application/json"})
        assert conn.getresponse().read()
        stalled = stack.enter_context(socket.create_connection(address(url), timeout=5))
        stalled.sendall(PARTIAL_BODY)
        time.sleep(0.3)
        proc.terminate()
        assert proc.wait(timeout=6) == 0
