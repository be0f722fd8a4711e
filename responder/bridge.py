"""The Flask app behind gunicorn's event loop: a request is read whole, then given a thread.

A slow or idle client (partial headers, a body that trickles in, a TLS handshake it never
finishes, an idle keep-alive) then holds a coroutine and its buffered bytes, never one of
the few threads that run the app, so it cannot delay anyone else's event. What they can hold
is bounded: a number of connections per worker (counted from accept, TLS handshakes
included), deadlines on the handshake, each request's headers and its body, and a budget of
body bytes held at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import io
import json
import logging
import resource
import socket
from asyncio import selector_events, sslproto
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

from a2wsgi.wsgi import build_environ
from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers.gasgi import ASGIWorker

from .logs import Trouble
from .settings import Settings

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Response = tuple[int, list[tuple[bytes, bytes]], bytes]
# As gthread did: how long a stopping worker keeps its idle connections open.
STOP_KEEPALIVE_LINGER = 2.0
# From a connection's start (or a kept-alive connection's next byte) to the end of the
# request's headers. Falcosidekick sends its few headers at once.
HEADER_SECONDS = 10.0
# A request line and its headers, in total (nginx's default is 4 x 8 KiB too). Falcosidekick
# sends a few hundred bytes, a browser on the console its cookies. gunicorn's own limits (32
# fields of 8 KiB) allow 256 KiB, which its Python parser checks byte by byte: ~10 ms of the
# worker's one event loop per stalled connection, so a flood of them delayed genuine events
# by seconds. Cut off here, each costs at most an eighth of that.
HEADER_BYTES = 32 * 1024
# From the end of the headers to the end of the body: a total, so trickling one byte now
# and then buys nothing. 1 MiB arrives in well under a second on any link we serve.
BODY_SECONDS = 30.0
# An unfinished TLS handshake (asyncio's default: 60 s), holding a read buffer and OpenSSL's.
TLS_HANDSHAKE_SECONDS = 10.0
# Bodies up to this size (Falco events are a few KiB) are let in whatever the budget holds:
# the connection cap bounds them (256 x 64 KiB = 16 MiB), and a genuine event is never
# refused because large bodies fill the budget.
SMALL_BODY_BYTES = 64 * 1024
# Bytes gunicorn reads from a connection ahead of the app (BoundedProtocol).
READ_AHEAD_BYTES = 64 * 1024
# At most one malloc_trim per this many seconds (a few ms on a heap of 300 MiB); longer than
# gunicorn's asgi_disconnect_grace_period (3 s), after which a closed connection's task ends.
TRIM_SECONDS = 4.0
# ... or at once after this many closes (a flood's evictions).
TRIM_EVERY_CLOSES = 128
# Files the worker needs besides its connections (listener, spool, journal, logs, clients).
FD_RESERVE = 64


class BufferedWSGI:
    """An ASGI app running the WSGI `app` in `threads` threads, each request with its body
    already in memory. A body over `max_body_bytes`, declared or chunked, is read no further:
    the app sees its size (not its bytes) and answers 413 itself, so the answer and its
    metric are the app's."""

    def __init__(self, app: Callable[..., Any], max_body_bytes: int, threads: int,
                 max_buffered_bytes: int = 32 * 1024 * 1024,
                 body_seconds: float = BODY_SECONDS):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="request")
        self.in_flight = 0  # requests read and not yet answered
        self.budget = BodyBudget(max_buffered_bytes)
        self.body_seconds = body_seconds

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self._serve(scope, receive, send)
        # Anything else (websocket) is not ours: returning refuses it.

    async def _serve(self, scope: Message, receive: Receive, send: Send) -> None:
        claim = Claim(self.budget)
        try:
            await self._serve_claimed(scope, receive, send, claim)
        finally:
            claim.release()

    async def _serve_claimed(self, scope: Message, receive: Receive, send: Send,
                             claim: Claim) -> None:
        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                # Refused unread: gunicorn closes the connection after, the body unread.
                raise BodyTooLarge(declared)
            claim.grow(declared or 0)
            async with asyncio.timeout(self.body_seconds):
                body = await _read_body(receive, self.max_body_bytes, claim)
        except BodyTooLarge as exc:
            body, size = b"", exc.size
        except OverBudget:
            # Refused before (or while) reading: the connection closes, its bytes unread.
            await _send_json(send, 503, "the server holds too many request bodies; retry")
            return
        except TimeoutError:
            await _send_json(send, 408, "the request body did not arrive within "
                             f"{self.body_seconds:.0f} s")
            return
        else:
            if body is None:
                # The client went away (then nothing is sent), or its body stalled past
                # gunicorn's timeout: not a server error.
                await _send_json(send, 408, "the request body did not arrive in full")
                return
            size = len(body)
        # Counted from here: a stop waits for requests in the app, not for slow bodies.
        self.in_flight += 1
        try:
            status, headers, content = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._call, scope, body, size)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
        finally:
            self.in_flight -= 1

    def _call(self, scope: Message, body: bytes, size: int) -> Response:
        """In a thread: run the app on the whole request and collect its whole answer."""
        environ = build_environ(scope, None)  # type: ignore[arg-type]
        environ["wsgi.input"] = io.BytesIO(body)
        # The body is whole: its length is known even when it came chunked.
        environ["CONTENT_LENGTH"] = str(size)
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
            started[:] = [int(status.split(" ", 1)[0]),
                          [(k.lower().encode("latin-1"), v.encode("latin-1"))
                           for k, v in headers]]
            return lambda chunk: chunks.append(chunk)

        chunks: list[bytes] = []
        result = self.app(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            getattr(result, "close", lambda: None)()
        return started[0], started[1], b"".join(chunks)


def _content_length(scope: Message) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            # gunicorn has refused a malformed or negative one already.
            return int(value)
    return None


async def _send_json(send: Send, status: int, error: str) -> None:
    content = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(content)).encode())]})
    await send({"type": "http.response.body", "body": content})


class BodyTooLarge(Exception):
    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


class OverBudget(Exception):
    """The worker holds its budget of body bytes already."""


class BodyBudget:
    """Body bytes held by one worker's requests, read or announced, at most `limit`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0


class Claim:
    """One request's share of the budget: its body size once over SMALL_BODY_BYTES. Only
    the event loop's thread touches it."""

    def __init__(self, budget: BodyBudget):
        self.budget = budget
        self.counted = 0

    def grow(self, size: int) -> None:
        """The body is (or will be) `size` bytes: OverBudget if that cannot be held."""
        if size <= SMALL_BODY_BYTES or size <= self.counted:
            return
        budget = self.budget
        if budget.held + size - self.counted > budget.limit:
            raise OverBudget()
        budget.held += size - self.counted
        self.counted = size

    def release(self) -> None:
        self.budget.held -= self.counted
        self.counted = 0


def _malloc_trim() -> None:
    """Hand the heap's free pages back to the system. glibc keeps what Python frees for
    reuse: after a burst of large headers or bodies from clients since gone, the worker
    would otherwise stay at its peak (measured: tests/test_hostile_load.py)."""
    # Not glibc (musl has no malloc_trim): the memory stays with the process.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


async def _read_body(receive: Receive, limit: int, claim: Claim) -> bytes | None:
    """The whole body (BodyTooLarge once it passes `limit` bytes: the rest is left unread;
    OverBudget once the worker cannot hold it), or None if the client disconnects first."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(size)
        claim.grow(size)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _lifespan(receive: Receive, send: Send) -> None:
    # The app is built before gunicorn serves and stopped by worker_exit: nothing to do.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class BufferedWorker(ASGIWorker):
    """gunicorn's asyncio worker serving a WSGI app through BufferedWSGI, with `threads`
    threads. The WSGI app stays `self.wsgi`, as with gunicorn's own workers."""

    asgi: BufferedWSGI

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        pass  # ASGIWorker warns about `threads`, which we use

    def load_wsgi(self) -> None:
        self.wsgi = self.app.wsgi()
        intake = Settings.from_env().intake
        limit = getattr(self.wsgi, "config", {}).get("MAX_CONTENT_LENGTH") \
            or intake.max_body_bytes
        self.asgi = BufferedWSGI(self.wsgi, limit, self.cfg.threads,
                                 intake.max_buffered_bytes)
        # gunicorn's setting (from RESPONDER_MAX_CONNECTIONS), which its asyncio worker
        # keeps but never enforces: ServingLoop does.
        _check_open_file_limit(self.worker_connections)

    def _setup_event_loop(self) -> None:
        """The standard asyncio loop, bounding connections (see ServingLoop)."""
        self.loop = ServingLoop(self)
        asyncio.set_event_loop(self.loop)

    def handle_exit_signal(self) -> None:
        """SIGTERM. ASGIWorker would wait for every connection to close, and an idle
        keep-alive (Falcosidekick's) never does: the stop would take graceful_timeout, and
        the arbiter would kill the worker before worker_exit drains. So: linger a moment for
        a request a client may already be sending, then stop once none is in the app."""
        super().handle_exit_signal()
        self.loop.create_task(self._stop_when_idle())

    async def _stop_when_idle(self) -> None:
        await asyncio.sleep(STOP_KEEPALIVE_LINGER)
        while self.asgi.in_flight:
            await asyncio.sleep(0.05)
        self.handle_quit_signal()  # ASGIWorker's immediate stop: idle connections close


def _check_open_file_limit(max_connections: int) -> None:
    """Raise the soft open-file limit to the hard one (often 1024 of 1048576): the
    connections count against it, and past it the spool cannot flush. Warn when the cap
    leaves too little."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d: %s",
                           soft, hard, exc)
    if soft != resource.RLIM_INFINITY and max_connections + FD_RESERVE > soft:
        logger.warning("RESPONDER_MAX_CONNECTIONS=%d leaves under %d of the %d open files "
                       "for the rest: past them accept and the spool's flush fail (EMFILE)",
                       max_connections, FD_RESERVE, soft)


class BoundedProtocol(ASGIProtocol):
    """gunicorn's HTTP/1 connection with a deadline on each request's headers: from the
    connection's start for the first request (a client that connects and says nothing is
    closed), from its first byte for the next ones (idle between requests stays bounded by
    `keepalive` alone). While a request is unfinished (headers or body still arriving) the
    connection may be closed to make room for a new one (ServingLoop)."""

    loop: ServingLoop

    def __init__(self, worker: Any, header_seconds: float = HEADER_SECONDS):
        super().__init__(worker)
        self._header_bytes = 0  # of the request whose headers are arriving
        self._header_tail = b""  # its last 3 bytes: the blank line may span two reads
        # What gunicorn reads ahead of the app before it stops reading (its default: 256
        # KiB). The app takes each chunk as it comes; a refused body need not fill it.
        self._max_buffer_size = READ_AHEAD_BYTES
        self.loop = worker.loop
        self.header_seconds = header_seconds
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._request_starts()

    def data_received(self, data: bytes) -> None:
        if not self._closed:  # a TLS connection may deliver bytes after our 431
            super().data_received(data)

    def _feed_callback_parser(self, data: bytes) -> bool:
        # Both what a read brings and a pipelined request's bytes, which gunicorn feeds
        # again after the request before it: each request gets the deadline and the limit.
        if self._current_request is None:
            if self._header_timer is None:
                self._request_starts()  # a kept-alive or pipelined connection's next request
            if self._headers_too_long(data):
                self._send_error_response(431, f"the request line and headers are over "
                                               f"{HEADER_BYTES} bytes")
                self._close_transport()
                return False
        return super()._feed_callback_parser(data)

    def _headers_too_long(self, data: bytes) -> bool:
        """Whether the headers arriving, with `data`, are over HEADER_BYTES. Only the bytes up
        to the blank line count: a body in the same read is the body's."""
        before = self._header_bytes - len(self._header_tail)
        self._header_bytes += len(data)
        if self._header_bytes <= HEADER_BYTES:
            self._header_tail = (self._header_tail + data)[-3:]
            return False
        end = (self._header_tail + data).find(b"\r\n\r\n")
        return end == -1 or before + end + 4 > HEADER_BYTES

    def _send_error_response(self, status: int, message: str,
                             extra_headers: Any = ()) -> None:
        # gunicorn's answer to a request it cannot read (400, 414, 431, 501 and ours above),
        # in JSON like every other error of ours. It closes the connection after.
        content = json.dumps({"error": message}).encode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in extra_headers)
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n"
                f"{extra}Connection: close\r\n\r\n")
        self._safe_write(head.encode("latin-1") + content)

    def _on_headers_complete(self) -> bool:
        self._cancel_header_timer()
        return super()._on_headers_complete()

    def _on_message_complete(self) -> None:
        self.loop.unfinished.pop(self, None)  # read whole: its request is in hand
        super()._on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self.loop.unfinished.pop(self, None)
        super().connection_lost(exc)
        if self._current_request is None and self._request_ready is not None:
            # Its task waits for headers that will never come: gunicorn would cancel it
            # after asgi_disconnect_grace_period (3 s), its buffers held meanwhile. The
            # parser (and the partial headers it holds, up to 256 KiB) refers back to this
            # protocol: let it go now rather than at the collector's next full pass.
            self._callback_parser = None
            self._request_ready.set()
        self.loop.trim_soon()

    def _request_starts(self) -> None:
        if self._closed:
            return
        self._header_bytes, self._header_tail = 0, b""
        self._header_timer = self.loop.call_later(self.header_seconds, self._headers_late)
        self.loop.unfinished[self] = self._evict

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._current_request is None:
            self._close_transport()
            if self._request_ready is not None:
                self._request_ready.set()  # the connection's task sees it closed and ends

    def _evict(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # its buffers go now, not after a close handshake


ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"


class ServingLoop(asyncio.SelectorEventLoop):
    """The asyncio loop gunicorn's worker serves on, bounding what connections can hold:

    - at most `worker.worker_connections` open, counted from accept (a TLS handshake holds
      asyncio's read buffer before gunicorn's protocol sees the connection). At the cap,
      the connection whose unfinished request (or handshake) started longest ago is
      closed to make room: a stalled client cannot keep a genuine one out, and a genuine
      request, read in milliseconds, is never the oldest. With none unfinished (all in the
      app or idle between requests) the new connection is closed at once, before any
      buffer or handshake;
    - a TLS handshake must finish within TLS_HANDSHAKE_SECONDS;
    - HTTP/1 connections get BoundedProtocol's header deadline;
    - accept failing for want of files (EMFILE) is logged once a minute, not per retry.

    Connections in gunicorn's protocol are its `worker.nr_conns`; those still in a
    handshake are counted here, in the only place asyncio lets them be seen."""

    def __init__(self, worker: Any):
        super().__init__()
        self.worker = worker
        self.handshaking = 0
        self.refused = self.evicted = 0
        # Oldest first: whatever can be closed to make room, and how to close it.
        self.unfinished: dict[Any, Callable[[], None]] = {}
        self._trim: asyncio.Handle | None = None
        self._closes_since_trim = 0
        self.at_cap = Trouble("RESPONDER_MAX_CONNECTIONS", logger, settle=10.0)
        self.accepting = Trouble("accepting a connection", logger, settle=10.0)
        self.set_exception_handler(ServingLoop._exception)

    async def create_server(self, protocol_factory: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is not None:
            kwargs["ssl_handshake_timeout"] = TLS_HANDSHAKE_SECONDS
        return await super().create_server(lambda: BoundedProtocol(self.worker),
                                           *args, **kwargs)

    def _make_ssl_transport(self, rawsock: Any, protocol: Any, sslcontext: Any,  # type: ignore
                            waiter: Any = None, *, server_side: bool = False,
                            server_hostname: str | None = None, extra: Any = None,
                            server: Any = None, **timeouts: Any) -> Any:
        # asyncio's own (CPython 3.11), with a smaller read buffer (SmallBufferSSLProtocol).
        ssl_protocol = SmallBufferSSLProtocol(self, protocol, sslcontext, waiter, server_side,
                                              server_hostname, **timeouts)
        selector_events._SelectorSocketTransport(self, rawsock, ssl_protocol, extra=extra,
                                                 server=server)
        return ssl_protocol._app_transport

    async def _accept_connection2(self, protocol_factory: Any, conn: Any,  # type: ignore
                                  *args: Any, **kwargs: Any) -> None:
        # asyncio's own step from an accepted socket to a transport (CPython 3.11, the
        # image's): the earliest point a connection can be refused without a buffer.
        self.accepting.passed()
        if not self._make_room():
            conn.close()
            return
        self.handshaking += 1
        # Until its handshake ends; a shutdown fails the handshake, and asyncio cleans up.
        self.unfinished[conn] = lambda: conn.shutdown(socket.SHUT_RDWR)
        try:
            await super()._accept_connection2(protocol_factory, conn, *args, **kwargs)
        finally:
            self.handshaking -= 1
            self.unfinished.pop(conn, None)

    def _make_room(self) -> bool:
        """Whether a new connection may be taken in, closing the oldest unfinished one if
        that is what it takes."""
        cap = self.worker.worker_connections
        if self.handshaking + self.worker.nr_conns < cap:
            if self.handshaking + self.worker.nr_conns <= cap // 2:
                self.at_cap.passed()
            return True
        admitted = bool(self.unfinished)
        if admitted:
            with contextlib.suppress(OSError):  # gone already
                self.unfinished.pop(next(iter(self.unfinished)))()
            self.evicted += 1
        else:
            self.refused += 1
        self.at_cap.failed(AtCapacity(cap, self.evicted, self.refused))
        return admitted

    def trim_soon(self) -> None:
        """A connection closed: return the memory it freed within TRIM_SECONDS or so."""
        self._closes_since_trim += 1
        if self._closes_since_trim == TRIM_EVERY_CLOSES:
            # A flood: what its closed connections held must not pile up for seconds.
            if self._trim is not None:
                self._trim.cancel()
            self._trim = self.call_soon(self._trim_now)
        elif self._trim is None:
            self._trim = self.call_later(TRIM_SECONDS, self._trim_now)

    def _trim_now(self) -> None:
        # A connection's objects (gunicorn's protocol, body receiver, request) refer to
        # each other: freed by the collector, which may take long to get to them (gc.freeze
        # keeps the app's own objects out of this pass: measured 4-60 ms, most under 15).
        gc.collect()
        _malloc_trim()
        # Once more after the last close of a burst: its tasks end up to gunicorn's
        # grace period after their close, and only then is their memory free.
        again, self._closes_since_trim = self._closes_since_trim, 0
        self._trim = self.call_later(TRIM_SECONDS, self._trim_now) if again else None

    def _exception(self, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_OUT_OF_RESOURCES:
            self.accepting.failed(context["exception"])
        else:
            self.default_exception_handler(context)


class SmallBufferSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol reads into a buffer it allocates, and zeroes, per connection
    as it accepts it: 256 KiB, a quarter GiB for a thousand half-sent ClientHellos. A TLS
    record is at most 16 KiB and a bit: 64 KiB reads a few at a time."""

    max_size = 64 * 1024


class AtCapacity(Exception):
    def __init__(self, cap: int, evicted: int, refused: int):
        super().__init__(f"{cap} connections open: {evicted} unfinished closed to make room, "
                         f"{refused} new refused so far")
