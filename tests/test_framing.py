"""Malformed or oversized HTTP framing against the real server (`responder serve`, raw
sockets): always a 4xx, never a 5xx; too large is 413 however the body is framed."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from responder.bridge import HEADER_BYTES, HEADER_SECONDS

from .conftest import recorded_events
from .serving import served
from .slowclients import NOT_HELD_UP_SECONDS, PARTIAL_HEADERS, address, assert_not_held_up

pytestmark = pytest.mark.slow

MAX_BODY = 4096
HEAD = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    env = {"RESPONDER_STATE_DIR": str(tmp_path_factory.mktemp("framing-state")),
           "RESPONDER_MAX_BODY_BYTES": str(MAX_BODY)}
    with served(env) as url:
        yield url


def exchange(url: str, raw: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send `raw` on a new connection; the status and body of the first answer."""
    with socket.create_connection(address(url), timeout=timeout) as sock:
        sock.sendall(raw)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def chunked(*chunks: bytes) -> bytes:
    return HEAD + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def event_bytes() -> bytes:
    return json.dumps({**recorded_events()[0], "uuid": str(uuid.uuid4())}).encode()


@pytest.mark.parametrize("raw", [
    HEAD + b"zz\r\nhello\r\n0\r\n\r\n",
    HEAD + b"-5\r\nhello\r\n0\r\n\r\n",
    HEAD + b"2\r\n{}EXTRA\r\n0\r\n\r\n",  # a chunk longer than its size says
], ids=["size-zz", "size-negative", "chunk-longer-than-declared"])
def test_malformed_chunked_body_is_a_4xx_naming_the_problem(server, raw):
    status, body = exchange(server, raw)
    assert 400 <= status < 500, (status, body)
    assert "chunk" in json.loads(body)["error"].lower()


@pytest.mark.parametrize("raw", [
    HEAD + b"5\r\nhel",
    HEAD.replace(b"Transfer-Encoding: chunked", b"Content-Length: 100") + b"{}",
], ids=["inside-a-chunk", "before-content-length"])
def test_body_cut_short_by_the_client_is_never_a_5xx(server, raw):
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        reply = sock.recv(65536)
    assert not reply or reply.startswith(b"HTTP/1.1 4"), reply


def test_chunked_body_over_the_limit_is_413_json(server):
    status, body = exchange(server, chunked(*[b"a" * 1000] * 5))
    assert status == 413
    assert "RESPONDER_MAX_BODY_BYTES" in json.loads(body)["error"]


def test_chunked_event_within_the_limit_is_queued(server):
    raw = event_bytes()
    status, body = exchange(server, chunked(raw[:100], raw[100:]))
    assert status == 202 and json.loads(body)["status"] == "queued"


def test_content_length_over_the_limit_is_413_at_once_and_holds_no_thread(server):
    """The body is never sent: the answer must not wait for it, and a few such requests
    left open must not keep a genuine event waiting."""
    raw = HEAD.replace(b"Transfer-Encoding: chunked", b"Content-Length: %d" % 10**8)
    with ExitStack() as stack:
        for _ in range(4):
            sock = stack.enter_context(socket.create_connection(address(server), timeout=5))
            start = time.monotonic()
            sock.sendall(raw)
            reply = sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 413"), reply
            assert time.monotonic() - start < NOT_HELD_UP_SECONDS  # not BODY_SECONDS later
            assert b"RESPONDER_MAX_BODY_BYTES" in reply
        assert_not_held_up(server)


def test_more_header_fields_than_a_stalled_connection_may_hold_is_431(server):
    fields = b"".join(b"X-Field-%d: %d\r\n" % (i, i) for i in range(40))
    status, body = exchange(server, b"POST / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert status == 431, (status, body)
    assert json.loads(body) == {"error": "Too many headers"}


def padded_headers(total: int, last_field: bytes = b"") -> bytes:
    """A request line and headers of `total` bytes, blank line included, `last_field` last."""
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    pad, fields = total - len(head) - len(last_field) - 2, b""
    for i in range(32):
        name = b"X-Pad-%d: " % i
        room = min(4000, pad - len(fields) - len(name) - 2)
        if room < 0:
            break
        fields += name + b"a" * room + b"\r\n"
    raw = head + fields + last_field + b"\r\n"
    assert len(raw) == total, (len(raw), total)
    return raw


def test_headers_over_32_kib_are_431_at_once_not_when_they_stall_out(server):
    """A stalled client with 32 KiB and a byte of headers is answered as soon as that byte
    arrives: its headers are not parsed further nor held until the 10 s deadline."""
    with socket.create_connection(address(server), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall(padded_headers(HEADER_BYTES + 3)[:-2])  # no blank line: it stalls
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 431 "), reply
    assert time.monotonic() - start < NOT_HELD_UP_SECONDS
    body = json.loads(reply.partition(b"\r\n\r\n")[2])
    assert body == {"error": f"the request line and headers are over {HEADER_BYTES} bytes"}


def test_headers_of_exactly_32_kib_with_a_body_in_the_same_read_are_queued(server):
    """The limit counts the headers only: a body sent with them is not counted against it."""
    body = event_bytes()
    raw = padded_headers(HEADER_BYTES, b"Content-Length: %d\r\n" % len(body))
    status, answer = exchange(server, raw + body)
    assert status == 202 and json.loads(answer)["status"] == "queued", answer


def replies(sock: socket.socket, timeout: float) -> list[bytes]:
    """Every answer on `sock` until the server closes it (status lines and bodies)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data.split(b"HTTP/1.1 ")[1:]


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def test_a_pipelined_request_gets_the_header_limit_too(server):
    """The second request of one send is fed to the parser after the first is answered:
    it is held to the same 32 KiB."""
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(HEALTHZ + padded_headers(HEADER_BYTES + 1))
        first, second = replies(sock, 5)
    assert first.startswith(b"200 ")
    assert second.startswith(b"431 ") and b"the request line and headers are over" in second


def test_a_pipelined_request_that_stalls_is_closed_at_the_header_deadline(server):
    with socket.create_connection(address(server), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall(HEALTHZ + PARTIAL_HEADERS)
        [first] = replies(sock, HEADER_SECONDS + 5)
        waited = time.monotonic() - start
    assert first.startswith(b"200 ")
    assert HEADER_SECONDS - 1 < waited < HEADER_SECONDS + 3, waited
