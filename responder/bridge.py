"""The Flask app behind gunicorn's event loop: a request is read whole, then given a thread.

A slow or idle client (partial headers, a body that trickles in, a TLS handshake it never
finishes, an idle keep-alive) then holds a coroutine and its buffered bytes, never one of
the few threads that run the app, so it cannot delay anyone else's event.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from a2wsgi.wsgi import build_environ
from gunicorn.workers.gasgi import ASGIWorker

from .settings import Settings

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Response = tuple[int, list[tuple[bytes, bytes]], bytes]
# As gthread did: how long a stopping worker keeps its idle connections open.
STOP_KEEPALIVE_LINGER = 2.0


class BufferedWSGI:
    """An ASGI app running the WSGI `app` in `threads` threads, each request with its body
    already in memory. A body over `max_body_bytes`, declared or chunked, is read no further:
    the app sees its size (not its bytes) and answers 413 itself, so the answer and its
    metric are the app's."""

    def __init__(self, app: Callable[..., Any], max_body_bytes: int, threads: int):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="request")
        self.in_flight = 0  # requests read and not yet answered

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self._serve(scope, receive, send)
        # Anything else (websocket) is not ours: returning refuses it.

    async def _serve(self, scope: Message, receive: Receive, send: Send) -> None:
        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                # Refused unread: gunicorn closes the connection after, the body unread.
                raise BodyTooLarge(declared)
            body = await _read_body(receive, self.max_body_bytes)
        except BodyTooLarge as exc:
            body, size = b"", exc.size
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


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body (BodyTooLarge once it passes `limit` bytes: the rest is left unread),
    or None if the client disconnects first."""
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
        limit = getattr(self.wsgi, "config", {}).get("MAX_CONTENT_LENGTH") \
            or Settings().intake.max_body_bytes
        self.asgi = BufferedWSGI(self.wsgi, limit, self.cfg.threads)

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
