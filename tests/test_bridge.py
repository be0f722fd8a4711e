"""responder.bridge without a server: what the app sees of a request read whole, and what is
answered when the body is too large or never arrives."""

from __future__ import annotations

import asyncio
import json

from flask import Flask, jsonify, request

from responder.bridge import BufferedWSGI

LIMIT = 1024


def echo_app() -> tuple[Flask, list]:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = LIMIT
    threads: list = []

    @app.post("/")
    def echo():
        import threading

        threads.append(threading.current_thread().name)
        body = request.get_data()
        return jsonify({"length": len(body), "content_length": request.content_length}), 200

    @app.errorhandler(413)
    def too_large(exc):
        return jsonify({"error": "too large"}), 413

    return app, threads


def call(bridge: BufferedWSGI, messages: list[dict], headers=()) -> tuple[int, dict]:
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
             "http_version": "1.1", "headers": list(headers), "server": ("127.0.0.1", 80)}
    sent: list[dict] = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(bridge(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_a_chunked_body_reaches_the_app_whole_with_its_length_in_a_request_thread():
    app, threads = echo_app()
    parts = [{"type": "http.request", "body": b"a" * 100, "more_body": True},
             {"type": "http.request", "body": b"b" * 50, "more_body": False}]
    status, body = call(BufferedWSGI(app, LIMIT, 2), parts,
                        [(b"transfer-encoding", b"chunked")])
    assert (status, body) == (200, {"length": 150, "content_length": 150})
    assert threads[0].startswith("request")


def test_a_chunked_body_past_the_limit_is_read_no_further_and_answered_413_by_the_app():
    app, _ = echo_app()
    parts = [{"type": "http.request", "body": b"a" * 1000, "more_body": True},
             {"type": "http.request", "body": b"a" * 1000, "more_body": True}]
    status, body = call(BufferedWSGI(app, LIMIT, 2), parts)
    assert (status, body) == (413, {"error": "too large"})


def test_a_declared_length_past_the_limit_is_answered_413_without_reading_the_body():
    app, _ = echo_app()
    unread: list[dict] = []  # receive() would fail: nothing may be read
    status, body = call(BufferedWSGI(app, LIMIT, 2), unread,
                        [(b"content-length", b"100000000")])
    assert (status, body) == (413, {"error": "too large"})


def test_a_body_that_never_arrives_is_408_json_not_a_server_error():
    app, threads = echo_app()
    status, body = call(BufferedWSGI(app, LIMIT, 2), [{"type": "http.disconnect"}])
    assert status == 408 and "did not arrive" in body["error"]
    assert threads == []  # the app never ran


def test_lifespan_is_acknowledged():
    app, _ = echo_app()
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(BufferedWSGI(app, LIMIT, 1)({"type": "lifespan"}, receive, send))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                         "lifespan.shutdown.complete"]
