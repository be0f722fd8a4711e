"""Verdicts and undos passed between replicas through the shared Redis: each replica keeps
its own journal, so an approval, a rejection or an undo that reaches the replica without
the event is handed to the replica that holds it.

Keys (under the shared prefix, `falco-responder:`):
- `awaiting:<uuid>`: JSON {owner, deadline, rules, actions} while the event awaits a
  verdict (TTL: the deadline plus `VERDICT_GRACE_SECONDS`).
- `verdict:<uuid>`: JSON verdict, set once (first verdict wins, a Lua GET-or-SET), by a
  click on any replica, the owner's own verdicts and its timeout alike.
- `held:<uuid>`: the owner of a finished event with something undoable (TTL: retention).
- `undo-requests:<owner>`: a list of JSON undo requests the owner serves (BLPOP).
- `undo-reply:<id>`: a list holding the owner's one answer to a request.
- `where:<uuid>`: the owner of an event decided or awaiting a verdict (TTL: retention), so a
  `GET /events/<uuid>` (or its `/evidence`) reaching another replica is answered by it.
- `read-requests:<owner>`: a list of JSON read requests the owner serves; answered on an
  `undo-reply:<id>` key as undos are.
- `alive:<owner>`: set by the owner's read servers every second (TTL 5 s): a read for a
  replica that is gone (a new pod is a new replica) is 404 at once, not a wait.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid as uuids
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import UndoRefused
from .logs import Trouble, clipped

logger = logging.getLogger(__name__)
#: How long past its deadline an awaiting record and its verdict stay in Redis: the owner
#: picks a verdict up on its next loop, or, after a restart, when it is back.
VERDICT_GRACE_SECONDS = 600.0
#: How long a caller waits for the owner's answer to an undo it passed on.
UNDO_WAIT_SECONDS = 10.0
#: An undo request older than this when the owner gets to it is dropped, not run: the
#: caller was told it "may still happen" within that time, not later.
UNDO_REQUEST_SECONDS = 60.0
#: How long the owner blocks on its request list per turn (below the client's 2 s timeout).
BLOCK_SECONDS = 1
#: How long a replica's `alive:` key outlives its read server's last turn.
ALIVE_MS = 5000
#: A read request older than this when the owner gets to it is dropped: its asker has
#: given up (eventread.READ_WAIT_SECONDS is shorter).
READ_REQUEST_SECONDS = 5.0
_ID_FILE = "replica-id"

# KEYS[1] verdict; ARGV verdict JSON, TTL (ms): the verdict already given, or this one.
# {1, verdict} when this one was set, {0, current} when another won first.
_FIRST_VERDICT = """
local current = redis.call('GET', KEYS[1])
if current then return {0, current} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, ARGV[1]}
"""


def replica_id(state_dir: Path) -> str:
    """This replica's name in Redis: made once per state dir (O_EXCL), so the web and worker
    processes of one replica, which share the journal's directory, share it too."""
    path = state_dir / _ID_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process is writing it right now
            text = path.read_text().strip()
            if text:
                return text
            time.sleep(0.01)
        raise
    name = uuids.uuid4().hex
    with os.fdopen(fd, "w") as out:
        out.write(name + "\n")
    return name


def readable(text: bytes | str) -> dict[str, Any]:
    """A verdict as stored; one that is not (a tampered Redis) reads as "unreadable", which
    no worker applies and every answer can still name."""
    try:
        verdict = json.loads(text)
    except ValueError:
        verdict = None
    if not isinstance(verdict, dict) or not isinstance(verdict.get("decision"), str):
        return {"decision": "unreadable", "by": "?", "via": "?", "at": None}
    return verdict


class Relay:
    """This replica's side of the relay, on the shared Redis client (`RedisState.redis`)."""

    def __init__(self, redis: Any, prefix: str, owner: str,
                 clock: Callable[[], float] = time.time):
        self.redis = redis
        self.prefix = prefix
        self.owner = owner
        self.clock = clock
        self._first = redis.register_script(_FIRST_VERDICT)
        self.trouble = Trouble("passing verdicts and undos through the shared Redis", logger)

    def __repr__(self) -> str:
        return f"Relay(owner={self.owner})"

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def _ttl_ms(self, deadline: float) -> int:
        return max(1000, int((deadline - self.clock() + VERDICT_GRACE_SECONDS) * 1000))

    # --- verdicts --------------------------------------------------------------------
    def publish_awaiting(self, uuid: str, record: Mapping[str, Any],
                         seconds: float | None = None) -> None:
        """Say that this replica holds `uuid`, awaiting a verdict until its deadline; with
        `seconds`, that reads of it are for this replica (`where`) that long."""
        shown = {"owner": self.owner, "deadline": record["deadline"],
                 "rules": record.get("rules", []),
                 "actions": [{"action": p.get("action"), "target": p.get("target")}
                             for p in record.get("planned", [])]}
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self._key("awaiting", uuid), json.dumps(shown),
                     px=self._ttl_ms(record["deadline"]))
            if seconds is not None:
                pipe.set(self._key("where", uuid), self.owner, px=max(1000, int(seconds * 1000)))
            pipe.execute()

    def awaiting(self, uuid: str) -> dict[str, Any] | None:
        """The published record of `uuid` awaiting a verdict on some replica, or None."""
        text = self.redis.get(self._key("awaiting", uuid))
        return json.loads(text) if text else None

    def first_verdict(self, uuid: str, verdict: Mapping[str, Any],
                      deadline: float) -> tuple[bool, dict[str, Any]]:
        """(True, verdict) when `verdict` is the first for `uuid`; else (False, the one given
        first). Atomic across replicas: a timeout racing a click has one winner."""
        won, text = self._first(keys=[self._key("verdict", uuid)],
                                args=[json.dumps(verdict), self._ttl_ms(deadline)])
        return bool(won), readable(text)

    def verdicts(self, uuids: list[str]) -> dict[str, dict[str, Any]]:
        """The verdicts given (anywhere) for these events: one MGET."""
        if not uuids:
            return {}
        texts = self.redis.mget([self._key("verdict", u) for u in uuids])
        return {u: readable(t) for u, t in zip(uuids, texts, strict=True) if t}

    # --- undo ------------------------------------------------------------------------
    def publish_held(self, events: list[tuple[str, bool]], seconds: float) -> None:
        """Say that this replica holds these finished events (`where`), and which have
        something to undo (`held`): a worker batch's, in one round trip."""
        ttl = max(1000, int(seconds * 1000))
        with self.redis.pipeline(transaction=False) as pipe:
            for uuid, undoable in events:
                pipe.set(self._key("where", uuid), self.owner, px=ttl)
                if undoable:
                    pipe.set(self._key("held", uuid), self.owner, px=ttl)
            pipe.execute()

    def holder(self, uuid: str) -> str | None:
        text = self.redis.get(self._key("held", uuid))
        return text.decode() if text else None

    def where(self, uuid: str) -> str | None:
        """The replica holding `uuid`, if it is serving reads (else None, as if unknown)."""
        owner = self.redis.get(self._key("where", uuid))
        if owner is None or self.redis.get(self._key("alive", owner.decode())) is None:
            return None
        return owner.decode()

    def mark_alive(self) -> None:
        self.redis.set(self._key("alive", self.owner), "1", px=ALIVE_MS)

    def request_undo(self, owner: str, uuid: str, by: str | None,
                     wait: float | None = None) -> dict[str, Any] | None:
        """Queue an undo to `owner` and wait up to `wait` s for its answer ({"status",
        "answer" | "error"}); None when none came in time."""
        return self._request("undo-requests", owner, {"uuid": uuid, "by": by},
                             UNDO_WAIT_SECONDS if wait is None else wait)

    def request_read(self, owner: str, uuid: str, what: str, wait: float
                     ) -> dict[str, Any] | None:
        """Ask `owner` for what it answers to a read of `uuid` (`what`: status, evidence)."""
        return self._request("read-requests", owner, {"uuid": uuid, "what": what}, wait)

    def _request(self, kind: str, owner: str, request: dict[str, Any], wait: float
                 ) -> dict[str, Any] | None:
        reply = self._key("undo-reply", uuids.uuid4().hex)
        queue = self._key(kind, owner)
        self.redis.rpush(queue, json.dumps({**request, "reply": reply, "asked": self.clock()}))
        self.redis.pexpire(queue, int(UNDO_REQUEST_SECONDS * 1000))
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            got = self.redis.blpop([reply], timeout=max(1, min(BLOCK_SECONDS, int(left))))
            if got:
                return json.loads(got[1])
        return None

    def next_undo_request(self) -> dict[str, Any] | None:
        """The oldest undo request for this replica, waiting up to a second for one."""
        got = self.redis.blpop([self._key("undo-requests", self.owner)], timeout=BLOCK_SECONDS)
        return json.loads(got[1]) if got else None

    def next_read_request(self) -> dict[str, Any] | None:
        self.mark_alive()
        got = self.redis.blpop([self._key("read-requests", self.owner)], timeout=BLOCK_SECONDS)
        return json.loads(got[1]) if got else None

    def answer(self, reply: str, body: Mapping[str, Any]) -> None:
        if not reply.startswith(self._key("undo-reply", "")):
            # Whoever wrote the request named another key: never write there.
            logger.warning("a relayed request named a reply key outside undo-reply: dropped")
            return
        self.redis.rpush(reply, json.dumps(body))
        self.redis.pexpire(reply, int(UNDO_REQUEST_SECONDS * 1000))


def relayed_undo(relay: Relay, uuid: str, by: str | None,
                 refused: UndoRefused) -> dict[str, Any]:
    """Undo `uuid`, which this replica does not hold, on the replica that does (as Redis
    says); raises `refused` (404) when no replica published it, UndoRefused 503 when Redis
    cannot be asked, 504 when the owner did not answer in time."""
    import redis

    try:
        owner = relay.holder(uuid)
        if owner is None or owner == relay.owner:
            raise refused
        answer = relay.request_undo(owner, uuid, by)
    except redis.RedisError as exc:
        raise UndoRefused(503, f"event {clipped(uuid, 128)} is not on this replica, and the "
                          f"shared Redis that says which replica holds it cannot be reached "
                          f"({type(exc).__name__}); try again") from None
    if answer is None:
        raise UndoRefused(504, f"the replica holding event {clipped(uuid, 128)} did not "
                          f"answer within {UNDO_WAIT_SECONDS:g} s; the undo may still happen "
                          f"there within {UNDO_REQUEST_SECONDS:g} s. Check its `undos` with "
                          "GET /events/<uuid>, the audit Events (reason FalcoResponseUndone) on "
                          "the objects, or Slack's undo message")
    if answer.get("status") != 200:
        raise UndoRefused(int(answer.get("status", 502)), str(answer.get("error")))
    logger.info("event %s undone by replica %s for %s", uuid, owner, by)
    return answer["answer"]


class RequestServer:
    """A thread serving, on the owner replica, the requests other replicas pass on through
    one Redis list, one at a time: `next_request` takes one (waiting up to a second), and
    `serve` answers it."""

    name = "relay"

    def __init__(self, relay: Relay):
        self.relay = relay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RequestServer:
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def next_request(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def serve(self, request: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                request = self.next_request()
                if request is not None:
                    self.serve(request)
            except Exception as exc:  # noqa: BLE001 - e.g. Redis down: wait, ask again
                self.relay.trouble.failed(exc)
                self._stop.wait(1.0)
            else:
                self.relay.trouble.passed()


class UndoServer(RequestServer):
    """Serves the undos other replicas pass on (with the local `undo`, which keeps its own
    concurrency bound)."""

    name = "undo-relay"

    def __init__(self, relay: Relay, undo: Callable[[str, str | None], dict[str, Any]]):
        super().__init__(relay)
        self.undo = undo

    def next_request(self) -> dict[str, Any] | None:
        return self.relay.next_undo_request()

    def serve(self, request: Mapping[str, Any]) -> None:
        """Run one passed-on undo and answer it on its reply key."""
        uuid = str(request.get("uuid"))
        if self.relay.clock() - float(request.get("asked", 0)) > UNDO_REQUEST_SECONDS:
            logger.warning("undo of event %s passed on too long ago: dropped", uuid)
            return
        try:
            body = {"status": 200, "answer": self.undo(uuid, request.get("by"))}
        except UndoRefused as exc:
            body = {"status": exc.status, "error": str(exc)}
        self.relay.answer(str(request["reply"]), body)


class ReadServer(RequestServer):
    """Serves the reads of its events other replicas pass on (a journal read each: never
    behind an undo, which has a thread of its own)."""

    name = "read-relay"

    def __init__(self, relay: Relay,
                 read: Callable[[str, str], tuple[int, dict[str, Any]]]):
        super().__init__(relay)
        self.read = read

    def next_request(self) -> dict[str, Any] | None:
        return self.relay.next_read_request()

    def serve(self, request: Mapping[str, Any]) -> None:
        try:
            asked = float(request.get("asked", 0))
        except (TypeError, ValueError):
            asked = 0.0
        if self.relay.clock() - asked > READ_REQUEST_SECONDS:
            return  # its asker has answered 504 already
        try:
            status, body = self.read(str(request.get("uuid")), str(request.get("what")))
        except Exception as exc:  # noqa: BLE001 - e.g. the journal busy: say so, at once
            logger.warning("a read passed on by another replica failed: %s", exc)
            status, body = 500, {"error": f"the replica holding the event could not read it "
                                 f"({type(exc).__name__}); try again"}
        self.relay.answer(str(request.get("reply")), {"status": status, "answer": body})
