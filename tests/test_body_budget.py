"""responder.bridge's per-worker budget of body bytes and its total body deadline, without a
server: a request past the budget is answered 503 (its body unread), small events always get
in, and the budget comes back when a request is done."""

from __future__ import annotations

import asyncio
import json

from responder.bridge import SMALL_BODY_BYTES, BufferedWSGI

from .test_bridge import call, echo_app

BIG = 200 * 1024
LIMIT = 1024 * 1024


def chunks(*sizes: int) -> list[dict]:
    return [{"type": "http.request", "body": b"a" * size, "more_body": i < len(sizes) - 1}
            for i, size in enumerate(sizes)]


def bridge(budget: int) -> BufferedWSGI:
    app, _ = echo_app()
    app.config["MAX_CONTENT_LENGTH"] = LIMIT
    return BufferedWSGI(app, LIMIT, 2, max_buffered_bytes=budget)


def test_a_declared_body_past_the_budget_is_refused_503_unread():
    served = bridge(BIG - 1)
    messages = chunks(BIG)
    status, body = call(served, messages, [(b"content-length", str(BIG).encode())])
    assert status == 503 and "too many request bodies" in body["error"]
    assert len(messages) == 1  # not a byte of it read
    assert served.budget.held == 0


def test_a_chunked_body_is_refused_once_it_outgrows_the_budget():
    served = bridge(BIG)
    status, body = call(served, chunks(BIG // 2, BIG // 2, BIG // 2),
                        [(b"transfer-encoding", b"chunked")])
    assert status == 503
    assert served.budget.held == 0


def test_bodies_within_the_budget_pass_and_give_it_back():
    served = bridge(BIG)
    for _ in range(3):
        status, body = call(served, chunks(BIG), [(b"content-length", str(BIG).encode())])
        assert (status, body["length"]) == (200, BIG)
        assert served.budget.held == 0


def test_a_small_event_gets_in_while_the_budget_is_full():
    served = bridge(BIG)
    served.budget.held = BIG  # large bodies are being read
    status, body = call(served, chunks(SMALL_BODY_BYTES),
                        [(b"content-length", str(SMALL_BODY_BYTES).encode())])
    assert (status, body["length"]) == (200, SMALL_BODY_BYTES)


def test_a_body_still_arriving_at_its_deadline_is_answered_408():
    app, _ = echo_app()
    served = BufferedWSGI(app, 1024, 2, body_seconds=0.2)
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
             "http_version": "1.1", "headers": [(b"content-length", b"10")],
             "server": ("127.0.0.1", 80)}
    sent: list[dict] = []

    async def trickle():  # a byte every 50 ms: never silent, never done
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"a", "more_body": True}

    async def send(message):
        sent.append(message)

    asyncio.run(served(scope, trickle, send))
    assert sent[0]["status"] == 408
    assert "did not arrive within" in json.loads(sent[1]["body"])["error"]
