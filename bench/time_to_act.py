"""Time to act, measured on the real kube-apiserver of the test fixture (tests/apiserver.py):
pods to act on, alerts sent on a schedule, and when the API server saw each action.

The clock that ends each measure is the API server's own: the `stageTimestamp` of the label
PATCH in its audit log (written before the answer is sent, --audit-log-mode=blocking), on
the same machine clock as the time the alert was posted. Nothing polls the responder while
it works, so the measure adds no load to what it measures, and the API-alone figure and the
queued one end at the same point.
"""

from __future__ import annotations

import http.client
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from responder.actions.isolation import POLICY_PREFIX
from tests.apiserver import RESPONDER, ApiServer, Cluster, new_cluster, session_server
from tests.netcat import FULL_CID, netcat_event

LABEL_TABLE = """\
defaults:
  dry_run: false
  protected_namespaces: [kube-system]
rules:
  - name: quarantine
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: label-pod
        params: {labels: {quarantine: "true"}}
"""
CONTAINMENT_VERBS = {"get", "patch", "delete", "list", "update"}


@contextmanager
def real_apiserver(workdir: Path) -> Iterator[ApiServer]:
    """etcd + kube-apiserver as the tests start them; stopped (by PID) on the way out.
    Missing binaries raise pytest's Skipped (a BaseException): the caller reports it."""
    # A directory of its own each time: sections 4 and 6 each start one in the same workdir.
    yield from session_server(Path(tempfile.mkdtemp(prefix="apiserver-", dir=workdir)))


def make_pods(server: ApiServer, count: int, label: str, owner: str | None = None) -> Cluster:
    """A namespace with one Ready node and `count` Running pods p0000..., each with the
    container the alerts name, standalone or each owned by a ReplicaSet of its own (`owner`,
    what isolate-pod's detach needs); made by 8 threads (a few seconds per 1,000)."""
    admin = server.admin_client()
    cluster = new_cluster(server, admin, label)
    node = cluster.add_node("node").metadata.name
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: cluster.add_pod(pod_name(i), node, (FULL_CID,), owner=owner),
                      range(count)))
    return cluster


def pod_name(index: int) -> str:
    return f"p{index:04d}"


def alert_body(namespace: str, index: int, run: str) -> bytes:
    event = netcat_event(uuid=f"{run}-{index:06d}", pod=pod_name(index), namespace=namespace)
    return json.dumps(event).encode()


class Poster:
    """Keep-alive connections to a responder, one per thread; records when each alert left."""

    def __init__(self, port: int):
        self.port = port
        self._local = threading.local()
        self.sent: dict[str, float] = {}  # pod -> time.time() just before the POST
        self.statuses: dict[int, int] = {}
        self._lock = threading.Lock()

    def post(self, namespace: str, index: int, run: str) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                                 timeout=30)
        body = alert_body(namespace, index, run)
        started = time.time()
        conn.request("POST", "/", body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        reply.read()
        with self._lock:
            self.sent[pod_name(index)] = started
            self.statuses[reply.status] = self.statuses.get(reply.status, 0) + 1

    def at_rate(self, namespace: str, indexes: range, rate: float, run: str) -> None:
        """One alert every 1/rate seconds, on a fixed schedule (a slow reply does not shift
        the next alert)."""
        start = time.monotonic()
        for n, index in enumerate(indexes):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.post(namespace, index, run)

    def burst(self, namespace: str, indexes: range, run: str) -> float:
        """All at once from one thread each (connections opened first); the start time."""
        barrier = threading.Barrier(len(indexes) + 1)

        def send(index: int) -> None:
            self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self._local.conn.connect()
            barrier.wait()
            self.post(namespace, index, run)

        threads = [threading.Thread(target=send, args=(i,)) for i in indexes]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.time()
        for thread in threads:
            thread.join()
        return started


@dataclass(frozen=True)
class Seen:
    """One request of the responder's, as the API server's audit log has it."""

    verb: str
    resource: str
    name: str
    received: float  # requestReceivedTimestamp, seconds since the epoch
    completed: float  # stageTimestamp of ResponseComplete


def audit_entries(server: ApiServer, mark: int, namespace: str) -> list[Seen]:
    """The responder's requests in `namespace` since `mark`, in the order they completed."""
    text = server.audit_log.read_bytes()[mark:].decode(errors="replace")
    found = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line, still being written
        ref = entry.get("objectRef") or {}
        if (entry["user"].get("username") != RESPONDER or entry["stage"] != "ResponseComplete"
                or ref.get("namespace") != namespace):
            continue
        found.append(Seen(entry["verb"], ref.get("resource", ""), ref.get("name", ""),
                          stamp(entry["requestReceivedTimestamp"]),
                          stamp(entry["stageTimestamp"])))
    return found


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def label_patch(seen: Seen) -> str | None:
    """The pod a pod PATCH is about (label-pod's, in a table that only labels)."""
    return seen.name if seen.verb == "patch" and seen.resource == "pods" else None


def policy_created(seen: Seen) -> str | None:
    """The pod an isolating NetworkPolicy CREATE is about (isolate-pod names it
    isolate-<pod>; the audit log names a created object from the request body)."""
    if seen.verb == "create" and seen.resource == "networkpolicies" \
            and seen.name.startswith(POLICY_PREFIX):
        return seen.name[len(POLICY_PREFIX):]
    return None


def wait_acted(server: ApiServer, mark: int, namespace: str, pods: set[str],
               timeout: float, key: Callable[[Seen], str | None] = label_patch
               ) -> dict[str, float]:
    """Completion time of the first request `key` names a pod of `pods` for (default: its
    label PATCH), waiting (reading the audit log every 0.2 s, after the alerts were all
    sent) until all are there."""
    deadline = time.monotonic() + timeout
    while True:
        done = {}
        for seen in audit_entries(server, mark, namespace):
            if (pod := key(seen)) in pods:
                done.setdefault(pod, seen.completed)
        if len(done) == len(pods) or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def latencies_ms(sent: dict[str, float], acted: dict[str, float]) -> list[float]:
    return sorted((acted[pod] - sent[pod]) * 1000 for pod in sent if pod in acted)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def budget_excess(times: list[float], qps: float, burst: float) -> float:
    """How far the requests at `times` exceeded a token bucket of `qps` and `burst`: the
    largest (requests in [t_i, t_j]) - qps * (t_j - t_i) - burst over all pairs; at most 0
    when the budget held."""
    times = sorted(times)
    worst = float("-inf")
    for i, first in enumerate(times):
        for j in range(i, len(times)):
            worst = max(worst, (j - i + 1) - qps * (times[j] - first) - burst)
    return worst if times else 0.0


def peak_per_second(times: list[float]) -> int:
    """Most requests that arrived within any one second."""
    times = sorted(times)
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] > 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def redis_round_trips(url: str, state_dir: Path, samples: int) -> dict[str, tuple[float, float]]:
    """p50/p99 ms of each shared-state operation an alert makes, on Redis at `url` and on
    the one-replica SQLite state in `state_dir`."""
    from responder.journal import EventStore
    from responder.localstate import LocalState
    from responder.shared import RedisState

    found = {}
    for name, state in (("redis", RedisState(url)), ("local", LocalState(EventStore(state_dir)))):
        ops = {"first_seen (intake)": lambda i, s=state: s.first_seen(f"k{i}", 60),
               "open_window (coalescing)": lambda i, s=state: s.open_window(f"w{i}", 30, "m"),
               "take_token (per API call)": lambda i, s=state: s.take_token("b", 1e9, 1e9)}
        for op, call in ops.items():
            took = []
            for i in range(samples):
                started = time.perf_counter()
                call(i)
                took.append((time.perf_counter() - started) * 1000)
            took.sort()
            found[f"{name}: {op}"] = (percentile(took, 0.5), percentile(took, 0.99))
    return found
