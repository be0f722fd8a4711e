"""Benchmark of falco-responder on this machine: intake throughput and latency against a bare
Flask baseline, time to act on a real kube-apiserver, a 10,000-event storm against an armed
table, and memory over 100,000 events.

    python bench/run.py            # the full run (about 5 minutes on 2 cores)
    python bench/run.py --quick    # a smoke run of a few seconds per section
    python bench/run.py --sections throughput --threads 4   # another RESPONDER_THREADS

Loopback only; every loop is bounded in count and time; every server it starts is stopped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the responder and the stand-ins in tests/, without install

EVENT = json.loads((ROOT / "tests/data/recorded-events.jsonl").read_text().splitlines()[0])
UUID_MARK = "@@UUID@@"
ECHO_APP, RESPONDER_APP = "bench.echo_app:create_app()", "responder.app:create_app()"
SERVE = "responder serve"  # the default: gunicorn and the queue worker under one parent
TARGETS = {"ratio": 0.70, "p99_ms": 5.0}
STORM_TABLE = """\
defaults:
  dry_run: false
  protected_namespaces: [kube-system]
  coalesce_seconds: 300
rules:
  - name: kill-shells
    match: {{rules: ["{rule}"]}}
    actions:
      - action: delete-pod
        params: {{grace_period_seconds: 0}}
"""
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{{name: bench, cluster: {{server: "{url}"}}}}]
users: [{{name: bench, user: {{token: bench-token}}}}]
contexts: [{{name: bench, context: {{cluster: bench, user: bench}}}}]
current-context: bench
"""


@dataclass(frozen=True)
class Profile:
    seconds: int  # one measured load run
    warmup: int  # load before the measured runs, per server
    storm_events: int
    slack_window: float
    memory_marks: tuple[int, ...]  # events posted in total at each RSS reading
    drain_timeout: float
    threads: int | None = None  # RESPONDER_THREADS for section 1's servers; None: default
    act_alerts: int = 120  # section 4: alerts at 4/s (30 s), each for another pod
    act_bursts: int = 3  # section 4: bursts of 20 alerts for 20 other pods
    flood: int = 1_000  # section 4: alerts for as many pods, posted as fast as we can
    flood_watch: float = 15.0  # seconds of the flood's API requests checked against the budget
    act_env: tuple[tuple[str, str], ...] = ()  # section 4: settings for `responder serve`
    console_alerts: int = 100_000  # section 5: alerts in the journal
    console_runs: int = 30  # section 5: timed requests per page
    hostile: int = 1_000  # section 7: stalled connections in each flood
    hostile_posts: int = 10  # section 7: genuine events posted during each flood


FULL = Profile(10, 2, 10_000, 5.0, (5_000, 50_000, 100_000), 300.0)
QUICK = Profile(1, 0, 200, 0.5, (200, 500, 1_000), 30.0, act_alerts=8, act_bursts=1,
                flood=100, flood_watch=3.0, console_alerts=5_000, console_runs=5,
                hostile=100, hostile_posts=3)


# --- servers --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any RESPONDER_* or KUBECONFIG of the caller's, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RESPONDER_") and k != "KUBECONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, "RESPONDER_KUBE_CONFIG": "none", **extra}


class Server:
    """gunicorn with the responder's own options (its event-loop worker, RESPONDER_WORKERS x
    _THREADS; `args` may override them), serving `app` on a free loopback port, or with
    `app` SERVE, `responder serve` (the same gunicorn plus a queue worker process); its log
    goes to a file, not a pipe."""

    def __init__(self, name: str, app: str, workdir: Path, env: dict[str, str],
                 args: tuple[str, ...] = ()):
        self.name = name
        self.port = free_port()
        self.state_dir = workdir / f"{name}-state"
        self.log_path = workdir / f"{name}.log"
        env = clean_env(RESPONDER_HOST="127.0.0.1", RESPONDER_PORT=str(self.port),
                        RESPONDER_STATE_DIR=str(self.state_dir), **env)
        argv = [sys.executable, "-m", "responder.cli", "serve"] if app == SERVE else [
            sys.executable, "-m", "gunicorn", "--config", "python:responder.gunicorn_conf", *args,
            app]
        self.supervised = app == SERVE
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /healthz in {timeout:g} s")

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            reply = conn.getresponse()
            return reply.status, reply.read().decode()
        finally:
            conn.close()

    def metric(self, name: str) -> float:
        """One unlabelled sample from /metrics."""
        text = self.get("/metrics")[1]
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else float("nan")

    def worker_pids(self) -> list[int]:
        """Every process doing the work: gunicorn's workers, and the queue worker if any."""
        return [pid for _, pid in self.roles()]

    def roles(self) -> list[tuple[str, int]]:
        """(role, pid) of each working process: "intake" (a gunicorn worker) or "queue"
        (the queue worker process of `responder serve`)."""
        if not self.supervised:
            return [("intake", pid) for pid in children(self.proc.pid)]
        found = []
        for pid in children(self.proc.pid):
            # An argument, not a substring: a checkout under /work/ would match too.
            if b"work" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                found.append(("queue", pid))
            else:  # the gunicorn master, whose children serve
                found.extend(("intake", worker) for worker in children(pid))
        return found

    def measure(self, run) -> Load:
        """`run()`'s load, with the CPU time the workers spent on it."""
        pids = self.worker_pids()
        before = cpu_seconds(pids)
        load = run()
        load.cpu_seconds = cpu_seconds(pids) - before
        return load

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, graceful: bool = False) -> None:
        """SIGTERM: gunicorn's graceful stop (the responder sends what Slack is owed), else
        SIGQUIT, its quick one; SIGKILL if either hangs."""
        if self.proc.poll() is None:
            # `responder serve` stops its children on SIGTERM only.
            quick = signal.SIGTERM if self.supervised else signal.SIGQUIT
            self.proc.send_signal(signal.SIGTERM if graceful else quick)
            try:
                self.proc.wait(70 if self.supervised else 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def serving(workdir: Path, *specs: tuple) -> Iterator[list[Server]]:
    """Start servers (name, app, env[, gunicorn args]) side by side, so their start-up times
    overlap; an idle responder costs a few wake-ups a second (worker poll, journal sync)."""
    servers: list[Server] = []
    try:
        for name, app, env, *args in specs:
            servers.append(Server(name, app, workdir, env, *args))
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if path.exists():
        return [int(p) for p in path.read_text().split()]
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by these processes (all their threads)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of one process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


# --- load generation ------------------------------------------------------------------

@dataclass
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: Counter
    cpu_seconds: float = float("nan")  # server side, when measured

    @property
    def cpu_ms(self) -> float:
        """Server CPU per request (all threads: intake, worker, journal sync)."""
        return self.cpu_seconds / self.requests * 1000 if self.requests else float("nan")

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)


def event_body() -> tuple[bytes, bytes]:
    """The recorded event around a uuid slot: (before, after)."""
    text = json.dumps(dict(EVENT, uuid=UUID_MARK), separators=(",", ":"))
    before, after = text.split(UUID_MARK)
    return before.encode(), after.encode()


def make_uuid(run: int, client: int, index: int) -> str:
    return f"{run:08x}-{client:04x}-4000-8000-{index:012x}"


def _client(port: int, run: int, client: int, count: int, deadline: float
            ) -> tuple[list[float], Counter]:
    """One keep-alive connection posting distinct events until `count` or `deadline`."""
    before, after = event_body()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    latencies, statuses, index = [], Counter(), 0
    while index < count and time.monotonic() < deadline:
        body = before + make_uuid(run, client, index).encode() + after
        started = time.perf_counter()
        conn.request("POST", "/", body, headers)
        reply = conn.getresponse()
        reply.read()
        latencies.append(time.perf_counter() - started)
        statuses[reply.status] += 1
        index += 1
    conn.close()
    return latencies, statuses


def python_load(port: int, run: int, concurrency: int, seconds: float = 3600.0,
                total: int | None = None) -> Load:
    """`concurrency` processes (no shared GIL), each with one persistent connection."""
    counts = [10**12] * concurrency if total is None else [
        total // concurrency + (i < total % concurrency) for i in range(concurrency)]
    started = time.monotonic()
    args = [(port, run, i, counts[i], started + seconds) for i in range(concurrency)]
    with multiprocessing.get_context("fork").Pool(concurrency) as pool:
        results = pool.starmap(_client, args)
    elapsed = time.monotonic() - started
    latencies = sorted(x for lat, _ in results for x in lat)
    statuses = sum((s for _, s in results), Counter())
    return Load(len(latencies), elapsed, percentile(latencies, 0.50) * 1000,
                percentile(latencies, 0.99) * 1000, statuses)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


WRK_SCRIPT = """\
local before = [==[{before}]==]
local after = [==[{after}]==]
local headers = {{["Content-Type"] = "application/json"}}
local count = 0
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
function request()
  count = count + 1
  local id = string.format("%08x-%04x-4000-8000-%012x", {run}, tid, count)
  return wrk.format("POST", "/", headers, before .. id .. after)
end
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk_load(port: int, run: int, concurrency: int, seconds: int, workdir: Path) -> Load:
    """wrk with a Lua script that gives every request a new uuid."""
    before, after = event_body()
    script = workdir / f"post-{run}.lua"
    script.write_text(WRK_SCRIPT.format(before=before.decode(), after=after.decode(), run=run))
    threads = min(concurrency, os.cpu_count() or 1)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s",
         str(script), f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    return parse_wrk(out, seconds)


def parse_wrk(out: str, seconds: float) -> Load:
    def latency(pct: str) -> float:
        found = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(found.group(1)) * _UNITS[found.group(2)] if found else float("nan")

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    statuses = Counter({200: requests})
    if bad:
        statuses[0] += int(bad.group(1))
        statuses[200] -= int(bad.group(1))
    if errors:
        statuses[-1] += sum(int(n) for n in errors.groups())
    return Load(requests, requests / rate if rate else seconds, latency("50"), latency("99"),
                statuses)


class Generator:
    """wrk when installed (C, no GIL), else the Python keep-alive client in processes."""

    def __init__(self, workdir: Path, force_python: bool):
        self.workdir = workdir
        self.wrk = None if force_python else shutil.which("wrk")
        self._run = int(time.time()) % 0xFFFF * 0x1000  # uuids differ between bench runs

    def describe(self) -> str:
        if self.wrk:
            version = subprocess.run([self.wrk, "-v"], capture_output=True, text=True).stdout
            return f"wrk ({version.split(' [')[0].strip() or 'wrk'}), Lua script, keep-alive"
        return ("Python http.client, one keep-alive connection per process "
                "(wrk not found: `apt-get install -y wrk` for lower client overhead)")

    def timed(self, port: int, concurrency: int, seconds: int) -> Load:
        self._run += 1
        if self.wrk:
            return wrk_load(port, self._run, concurrency, seconds, self.workdir)
        return python_load(port, self._run, concurrency, seconds=seconds)

    def counted(self, port: int, total: int, concurrency: int = 4) -> Load:
        self._run += 1
        return python_load(port, self._run, concurrency, total=total)


# --- output ---------------------------------------------------------------------------

def header(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def table(columns: list[str], rows: list[list[object]]) -> None:
    cells = [[str(c) for c in columns]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sys.stdout.flush()


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    return f"{os.cpu_count()} CPU(s), {model}; Linux {platform.release()}"


# --- 1. throughput and latency --------------------------------------------------------

def section_throughput(profile: Profile, gen: Generator, workdir: Path) -> None:
    header("1. Intake throughput and latency (POST / with a recorded event, distinct uuids)")
    from responder.settings import Settings

    defaults = Settings.from_env({})
    threads = profile.threads or defaults.intake.threads
    env = {"RESPONDER_THREADS": str(threads)}
    print(f"gunicorn's event loop, {defaults.intake.workers} worker x {threads} threads ("
          + ("the responder's defaults" if threads == defaults.intake.threads else "--threads")
          + ") for all; "
          f"{profile.warmup} s warm-up, then {profile.seconds} s per run; the responder runs "
          "the packaged table (dry-run), no cluster, and acts on every event while it is "
          "measured; server CPU counts every process of the server, the queue worker's too")
    results: dict[tuple[str, int], Load] = {}
    base = "echo baseline (bare Flask + gunicorn)"
    # The former serving model, whose threads slow clients could hold: what the event loop
    # costs is the gap between the two baselines.
    gthread = "echo baseline under gthread (bare Flask + gunicorn gthread)"
    default = "responder serve (default: queue worker process)"
    thread = "responder, queue worker thread (RESPONDER_WORKER=thread)"
    specs = (("echo", ECHO_APP, env), ("echo-gthread", ECHO_APP, env, ("-k", "gthread")),
             ("responder", SERVE, env),
             ("thread", RESPONDER_APP, {**env, "RESPONDER_WORKER": "thread"}))
    with serving(workdir, *specs) as servers:
        for label, server in zip((base, gthread, default, thread), servers, strict=True):
            if profile.warmup:
                gen.timed(server.port, 8, profile.warmup)
            for concurrency in (1, 8):
                results[(label, concurrency)] = server.measure(
                    lambda s=server, c=concurrency: gen.timed(s.port, c, profile.seconds))
    table(["server", "concurrency", "req/s", "p50 ms", "p99 ms", "server CPU ms/req",
           "non-2xx"],
          [[label, c, f"{r.rate:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.cpu_ms:.2f}",
            r.errors] for (label, c), r in results.items()])
    for label in (default, thread):
        for concurrency in (1, 8):
            ratio = results[(label, concurrency)].rate / results[(base, concurrency)].rate
            print(f"{label} = {ratio:.0%} of baseline at concurrency {concurrency} "
                  f"(target >= {TARGETS['ratio']:.0%}: {verdict(ratio >= TARGETS['ratio'])})")
            if label == default:
                ratio = results[(label, concurrency)].rate / results[(gthread, concurrency)].rate
                print(f"{label} = {ratio:.0%} of the gthread baseline at concurrency "
                      f"{concurrency} (target >= {TARGETS['ratio']:.0%}: "
                      f"{verdict(ratio >= TARGETS['ratio'])})")
        p99 = results[(label, 1)].p99_ms
        print(f"{label}: p99 latency at concurrency 1 = {p99:.2f} ms "
              f"(target < {TARGETS['p99_ms']:g} ms: {verdict(p99 < TARGETS['p99_ms'])})")


# --- 2. storm -------------------------------------------------------------------------

def storm_env(kube_url: str, slack, mode: str, workdir: Path, window: float) -> dict[str, str]:
    kubeconfig = workdir / f"kubeconfig-{mode}"
    kubeconfig.write_text(KUBECONFIG.format(url=kube_url))
    actions = workdir / "storm-actions.yaml"
    actions.write_text(STORM_TABLE.format(rule=EVENT["rule"]))
    env = {"RESPONDER_KUBE_CONFIG": "kubeconfig", "KUBECONFIG": str(kubeconfig),
           "RESPONDER_ACTIONS_FILE": str(actions), "RESPONDER_SLACK_WINDOW_SECONDS": f"{window:g}"}
    if mode == "web-api":
        env.update(RESPONDER_SLACK_TOKEN="xoxb-bench", RESPONDER_SLACK_CHANNEL="C1",
                   RESPONDER_SLACK_API_URL=slack.api_url)
    else:
        env.update(RESPONDER_SLACK_WEBHOOK_URL=slack.webhook_url)
    return env


def wait_drained(server: Server, timeout: float) -> tuple[float, float]:
    """Poll responder_queue_depth until 0; (seconds waited, depth left)."""
    started = time.monotonic()
    depth = server.metric("responder_queue_depth")
    while depth > 0 and time.monotonic() - started < timeout:
        time.sleep(0.2)
        depth = server.metric("responder_queue_depth")
    return time.monotonic() - started, depth


def slack_counts(slack) -> Counter:
    with slack.state.lock:
        paths = [r.path for r in slack.state.requests if r.status == 200]
    names = {"/api/chat.postMessage": "chat.postMessage", "/api/chat.update": "chat.update"}
    return Counter(names.get(p, "webhook post" if p.startswith("/services/") else p)
                   for p in paths)


def wait_slack_settled(slack, window: float, timeout: float) -> Counter:
    """Wait until Slack has seen nothing new for a window and a bit (the summary's due)."""
    quiet_for, deadline = window + 1.0, time.monotonic() + timeout
    last, since = slack_counts(slack), time.monotonic()
    while time.monotonic() - since < quiet_for and time.monotonic() < deadline:
        time.sleep(0.2)
        now = slack_counts(slack)
        if now != last:
            last, since = now, time.monotonic()
    return last


def stand_ins(stack: ExitStack) -> tuple:
    """A Kubernetes API with the event's pod on one of two nodes, and a Slack."""
    from tests.kubeapi import KubeServer
    from tests.slackserver import SlackServer

    kube = stack.enter_context(KubeServer())
    slack = stack.enter_context(SlackServer())
    for stand_in in (kube, slack):
        # The stand-ins write headers and body apart; without TCP_NODELAY every call
        # waits ~40 ms for a delayed ACK, which would be the stand-in's cost, not ours.
        stand_in.httpd.RequestHandlerClass.disable_nagle_algorithm = True
    kube.api.add_node("node-1")
    kube.api.add_node("node-2")
    container = EVENT["output_fields"]["container.id"]
    kube.api.add_pod(EVENT["output_fields"]["k8s.ns.name"], EVENT["output_fields"]["k8s.pod.name"],
                     node="node-1", container_ids=(container + "0" * (64 - len(container)),))
    return kube, slack


def run_storm(profile: Profile, gen: Generator, server: Server, kube, slack) -> dict:
    posted = gen.counted(server.port, profile.storm_events)
    drained, left = wait_drained(server, profile.drain_timeout)
    settled = wait_slack_settled(slack, profile.slack_window, 60.0)
    server.stop(graceful=True)  # the notifier sends what it still owes
    return {"posted": posted, "drained": drained, "left": left, "slack": settled,
            "slack_after_stop": slack_counts(slack),
            "kube": Counter((c.method, c.path) for c in kube.api.calls)}


def section_storm(profile: Profile, gen: Generator, workdir: Path) -> None:
    n = profile.storm_events
    header(f"2. Storm: {n:,} identical events for one pod, armed delete-pod")
    from responder.settings import Settings

    defaults = Settings.from_env({})
    print(f"rule {EVENT['rule']!r}, pod {EVENT['output_fields']['k8s.ns.name']}/"
          f"{EVENT['output_fields']['k8s.pod.name']}, distinct uuids, 4 keep-alive "
          f"connections; coalesce_seconds 300, RESPONDER_SLACK_WINDOW_SECONDS "
          f"{profile.slack_window:g}, RESPONDER_KUBE_QPS/BURST at their defaults "
          f"({defaults.kubernetes.qps:g}/{defaults.kubernetes.burst}); "
          "the Kubernetes API (2 nodes) and Slack are the local stand-ins from tests/")
    modes = ("web-api", "webhook")
    with ExitStack() as stack:
        parts = {mode: stand_ins(stack) for mode in modes}
        specs = [(f"storm-{mode}", SERVE,
                  storm_env(kube.url, slack, mode, workdir, profile.slack_window))
                 for mode, (kube, slack) in parts.items()]
        servers = stack.enter_context(serving(workdir, *specs))
        for mode, server in zip(modes, servers, strict=True):
            print_storm(mode, run_storm(profile, gen, server, *parts[mode]), n)


def print_storm(mode: str, r: dict, n: int) -> None:
    posted: Load = r["posted"]
    print(f"\n-- Slack {mode} mode --")
    print(f"posted {posted.requests:,} in {posted.seconds:.1f} s ({posted.rate:,.0f}/s), "
          f"statuses {dict(posted.statuses)}; queue drained {r['drained']:.1f} s later"
          + (f" -- NOT drained, {r['left']:.0f} left" if r["left"] > 0 else ""))
    calls = r["kube"]
    table(["Kubernetes API call", "count"],
          [[f"{method} {path}", count] for (method, path), count in sorted(calls.items())])
    deletes = sum(c for (method, _), c in calls.items() if method == "DELETE")
    total = sum(calls.values())
    print(f"DELETE calls: {deletes} (target 1: {verdict(deletes == 1)}); all API calls: "
          f"{total:,} ({total / n:.4f} per event)")
    slack, after = r["slack"], r["slack_after_stop"]
    shown = ", ".join(f"{k} {v}" for k, v in sorted(slack.items())) or "none"
    extra = after - slack
    print(f"Slack requests once settled: {shown}"
          + (f"; at shutdown: +{dict(extra)}" if extra else ""))
    if mode == "web-api":
        posts = slack.get("chat.postMessage", 0)
        print(f"Slack messages posted: {posts} (target 1: {verdict(posts == 1)}), "
              f"chat.update calls: {slack.get('chat.update', 0)}")
    else:
        print(f"Slack messages posted: {slack.get('webhook post', 0)} (a webhook cannot edit: "
              "the first message, then one summary per window that saw more events)")


# --- 3. memory ------------------------------------------------------------------------

def section_memory(profile: Profile, gen: Generator, workdir: Path) -> None:
    header("3. Memory: RSS of `responder serve`'s processes while events accumulate")
    print("packaged default table (dry-run), no cluster, Slack off; each reading is taken "
          "once the queue has drained")
    rows = []
    with serving(workdir, ("memory", SERVE, {})) as (server,):
        sent, started = 0, time.monotonic()
        for mark in profile.memory_marks:
            load = gen.counted(server.port, mark - sent)
            sent = mark
            _, left = wait_drained(server, profile.drain_timeout)
            rows.append(memory_row(server, sent, load, left, time.monotonic() - started))
    table(["events posted", "intake RSS MiB", "intake peak MiB", "queue worker RSS MiB",
           "queue worker peak MiB", "journal MiB", "non-2xx", "queue left", "elapsed s"], rows)
    for column, role in ((1, "intake"), (3, "queue worker")):
        first, last = float(rows[0][column]), float(rows[-1][column])
        print(f"{role} RSS change from {profile.memory_marks[0]:,} to "
              f"{profile.memory_marks[-1]:,} events: {last - first:+.1f} MiB")


def memory_row(server: Server, sent: int, load: Load, left: float, elapsed: float) -> list:
    cells = []
    for role in ("intake", "queue"):
        used = [memory_kib(pid) for name, pid in server.roles() if name == role]
        cells += [f"{sum(m['VmRSS'] for m in used) / 1024:.1f}",
                  f"{sum(m['VmHWM'] for m in used) / 1024:.1f}"]
    journal = sum(p.stat().st_size for p in server.state_dir.rglob("*")
                  if p.name.startswith("events.sqlite3") or p.suffix == ".spool")
    return [f"{sent:,}", *cells, f"{journal / 2**20:.1f}", load.errors, f"{left:.0f}",
            f"{elapsed:.0f}"]


# --- 4. time to act ------------------------------------------------------------------

ALERT_RATE = 4.0
BURST = 20
ACT_TARGETS = {"p50_ms": 15.0, "p99_ms": 50.0, "burst_ms": 1000.0}


def started_apiserver(stack: ExitStack, tta, workdir: Path):
    """A real kube-apiserver for a section, stopped with `stack`; None (said) when its
    binaries are missing (pytest's Skipped, a BaseException)."""
    try:
        return stack.enter_context(tta.real_apiserver(workdir))
    except BaseException as exc:  # noqa: BLE001 - pytest's Skipped: binaries missing
        if type(exc).__name__ != "Skipped":
            raise
        print(f"skipped: {exc}")
        return None


def section_time_to_act(profile: Profile, gen: Generator, workdir: Path) -> None:
    header("4. Time to act: from the POST to the label PATCH on a real kube-apiserver")
    from bench import time_to_act as tta

    print("etcd + kube-apiserver from tests/apiserver.py; table: one armed rule, label-pod; "
          "each alert for another Running pod (standalone, its container id matching); "
          "measured to the stageTimestamp of the pod's PATCH in the apiserver's audit log")
    with ExitStack() as stack:
        api = started_apiserver(stack, tta, workdir)
        if api is None:
            return
        kubeconfig = api.write_kubeconfig(workdir / "act.kubeconfig", api.pki.responder)
        actions = workdir / "act-actions.yaml"
        actions.write_text(tta.LABEL_TABLE)
        env = {"RESPONDER_KUBE_CONFIG": "kubeconfig", "KUBECONFIG": str(kubeconfig),
               "RESPONDER_ACTIONS_FILE": str(actions)}
        act_latency(profile, tta, api, env, workdir)
        act_flood(profile, tta, api, env, workdir)
        redis_costs(tta, workdir)


def act_latency(profile: Profile, tta, api, env: dict[str, str], workdir: Path) -> None:
    alerts, bursts = profile.act_alerts, profile.act_bursts
    # One more pod per server: its alert waits for the queue worker process to be up.
    cluster = tta.make_pods(api, alerts + bursts * BURST + 2, "time-to-act")
    lifted = {**env, "RESPONDER_INTAKE": "inline", "RESPONDER_THREADS": str(BURST),
              **{name: "1000000" for name in UNLIMITED}}
    api_alone = "API alone (inline intake, no client rate limit)"
    changed = " ".join(f"{k}={v}" for k, v in profile.act_env)
    default = f"responder serve, {changed or 'defaults'}"
    served = {**env, **dict(profile.act_env)}
    rows, results = [], {}
    for n, (label, name, app, server_env) in enumerate((
            (api_alone, "act-inline", RESPONDER_APP, lifted),
            (default, "act-serve", SERVE, served))):
        with serving(workdir, (name, app, server_env)) as (server,):
            warm_up(tta, api, server, cluster.namespace, alerts + bursts * BURST + n)
            results[label] = act_runs(tta, api, server, cluster.namespace, alerts, bursts)
        rate, burst_lat, last = results[label]
        rows.append([label, f"{ALERT_RATE:g}/s", len(rate), *ms3(rate), "-"])
        rows.append([label, f"burst of {BURST} (x{bursts})", len(burst_lat), *ms3(burst_lat),
                     f"{max(last):.0f}" if last else "nan"])
    print(f"{alerts} alerts at {ALERT_RATE:g}/s, then {bursts} burst(s) of {BURST} alerts "
          f"sent together; inline: RESPONDER_THREADS={BURST}")
    table(["server", "alerts", "acted", "p50 ms", "p90 ms", "p99 ms", "20th of a burst ms"],
          rows)
    base, ours = results[api_alone][0], results[default][0]
    for q, key in ((0.5, "p50_ms"), (0.99, "p99_ms")):
        extra = tta.percentile(ours, q) - tta.percentile(base, q)
        print(f"{default}: {key[:3]} = API alone + {extra:.1f} ms (target <= +"
              f"{ACT_TARGETS[key]:g} ms: {verdict(extra <= ACT_TARGETS[key])})")
    last = max(results[default][2], default=float("inf"))
    print(f"{default}: the {BURST}th alert of a burst acted on within {last:.0f} ms (target <= "
          f"{ACT_TARGETS['burst_ms']:g} ms: {verdict(last <= ACT_TARGETS['burst_ms'])})")


def ms3(values: list[float]) -> list[str]:
    from bench.time_to_act import percentile as pct

    return [f"{pct(values, q):.1f}" for q in (0.5, 0.9, 0.99)]


def warm_up(tta, api, server: Server, namespace: str, index: int, key=None) -> None:
    """One alert acted on before measuring: the worker process is up, connected, warm."""
    mark, poster = api.audit_mark(), tta.Poster(server.port)
    poster.post(namespace, index, f"warm-{server.name}")
    if not tta.wait_acted(api, mark, namespace, set(poster.sent), 60.0,
                          key or tta.label_patch):
        raise RuntimeError(f"{server.name} did not act on its warm-up alert:\n"
                           f"{server.log_tail()}")


def act_runs(tta, api, server: Server, namespace: str, alerts: int, bursts: int,
             key=None, wait: float = 30.0) -> tuple:
    """Latencies at 4/s, latencies in bursts, and each burst's last (ms), to the request
    `key` names (default: the label PATCH)."""
    key = key or tta.label_patch
    run = f"{server.name}-{time.time_ns()}"
    mark = api.audit_mark()
    poster = tta.Poster(server.port)
    poster.at_rate(namespace, range(alerts), ALERT_RATE, run)
    acted = tta.wait_acted(api, mark, namespace, set(poster.sent), wait, key)
    rate = tta.latencies_ms(poster.sent, acted)
    burst_lat, last = [], []
    for n in range(bursts):
        # Each burst arrives at a rested responder: its containment bucket full again
        # (RESPONDER_KUBE_BURST / RESPONDER_KUBE_QPS = 2 s at the defaults; 3 s is more).
        time.sleep(3.0)
        first = alerts + n * BURST
        mark, poster = api.audit_mark(), tta.Poster(server.port)
        started = poster.burst(namespace, range(first, first + BURST), run)
        acted = tta.wait_acted(api, mark, namespace, set(poster.sent), wait, key)
        burst_lat += tta.latencies_ms(poster.sent, acted)
        if len(acted) == BURST:
            last.append((max(acted.values()) - started) * 1000)
    return rate, sorted(burst_lat), last


def act_flood(profile: Profile, tta, api, env: dict[str, str], workdir: Path) -> None:
    """Alerts for `profile.flood` pods at once: the API requests stay within the budget,
    and containment keeps its own rate while the audit Events wait."""
    from responder.settings import Settings

    defaults = Settings.from_env(dict(profile.act_env))
    cluster = tta.make_pods(api, profile.flood, "flood")
    with serving(workdir, ("act-flood", SERVE, {**env, **dict(profile.act_env)})) as (server,):
        mark, poster = api.audit_mark(), tta.Poster(server.port)
        began = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: poster.post(cluster.namespace, i, "flood"),
                          range(profile.flood)))
        posting = time.monotonic() - began
        time.sleep(max(0.0, profile.flood_watch - posting))
        seen = tta.audit_entries(api, mark, cluster.namespace)
    print(f"\n{profile.flood:,} alerts for {profile.flood:,} pods posted in {posting:.2f} s "
          f"(statuses {poster.statuses}); the responder's requests in the first "
          f"{profile.flood_watch:g} s, against RESPONDER_KUBE_QPS/BURST "
          f"{defaults.kubernetes.qps:g}/{defaults.kubernetes.burst} (containment: pod reads and "
          f"actions) and RESPONDER_AUDIT_QPS/BURST {defaults.kubernetes.audit_qps:g}/"
          f"{defaults.kubernetes.audit_burst} (audit Events)")
    groups = {"containment": ([s.received for s in seen if s.resource == "pods"],
                              defaults.kubernetes.qps, defaults.kubernetes.burst),
              "audit Events": ([s.received for s in seen if s.resource == "events"],
                               defaults.kubernetes.audit_qps, defaults.kubernetes.audit_burst)}
    groups["all"] = (groups["containment"][0] + groups["audit Events"][0],
                     defaults.kubernetes.qps + defaults.kubernetes.audit_qps,
                     defaults.kubernetes.burst + defaults.kubernetes.audit_burst)
    rows = []
    for name, (times, qps, burst) in groups.items():
        excess = tta.budget_excess(times, qps, burst)
        span = max(times) - min(times) if len(times) > 1 else 0.0
        rows.append([name, len(times), f"{len(times) / span:.1f}" if span else "-",
                     tta.peak_per_second(times), f"{qps:g}/{burst}",
                     f"{excess:+.1f}", verdict(excess <= FLOOD_TOLERANCE)])
    table(["requests", "count", "mean/s", "peak in 1 s", "budget qps/burst",
           "excess over bucket", "within budget"], rows)
    patches = sum(s.verb == "patch" for s in seen)
    print(f"pods labelled in {profile.flood_watch:g} s: {patches} (containment at its own "
          f"budget: 2 requests per alert, GET and PATCH)")


# Request times are the API server's arrival times, not the client's token times: a request
# can arrive up to a connection's queueing later than its token was taken.
FLOOD_TOLERANCE = 1.0
UNLIMITED = ("RESPONDER_KUBE_QPS", "RESPONDER_KUBE_BURST", "RESPONDER_AUDIT_QPS",
             "RESPONDER_AUDIT_BURST")


def redis_costs(tta, workdir: Path) -> None:
    """What sharing the state through Redis (two replicas) costs per operation, beside the
    one-replica SQLite state."""
    from tests.redisserver import RedisServer

    try:
        redis = RedisServer()
    except BaseException as exc:  # noqa: BLE001 - pytest's Skipped: redis-server missing
        if type(exc).__name__ != "Skipped":
            raise
        print(f"Redis round trips: skipped: {exc}")
        return
    with redis:
        found = tta.redis_round_trips(redis.url, workdir / "rtt-state", 2000)
    print("\nshared state per operation (redis-server on loopback, 2,000 each; an alert "
          "makes 1 first_seen, 1 open_window and 1 take_token per API request):")
    table(["operation", "p50 ms", "p99 ms"],
          [[name, f"{p50:.3f}", f"{p99:.3f}"] for name, (p50, p99) in found.items()])


# --- 6. time to contain ----------------------------------------------------------------

#: Containment (POST -> NetworkPolicy CREATE, packaged table) may take at most this much
#: longer than labelling (POST -> label PATCH) at the p99 of 4 alerts/s: capture-evidence
#: reads 5+ objects before isolate-pod starts, and 100 ms is ~20 such reads on a loaded API
#: server, and well under the seconds a reverse shell needs to do harm by hand.
CONTAIN_TARGET_MS = 100.0
KUBELET_LOG_LINES = 1_000  # lines of the fake kubelet's log per container (~80 KiB)


def section_time_to_contain(profile: Profile, gen: Generator, workdir: Path) -> None:
    header("6. Time to contain: from the POST to the NetworkPolicy CREATE, packaged table armed")
    from bench import time_to_act as tta

    print("etcd + kube-apiserver from tests/apiserver.py; each alert a netcat reverse shell "
          "in another Running pod owned by a ReplicaSet of its own; `responder serve` with "
          f"{' '.join(f'{k}={v}' for k, v in profile.act_env) or 'its defaults'}; times to the "
          "stageTimestamp in the apiserver's audit log")
    with ExitStack() as stack:
        api = started_apiserver(stack, tta, workdir)
        if api is None:
            return
        kubeconfig = api.write_kubeconfig(workdir / "contain.kubeconfig", api.pki.responder)
        env = {"RESPONDER_KUBE_CONFIG": "kubeconfig", "KUBECONFIG": str(kubeconfig),
               **dict(profile.act_env)}
        results = {label: contain_run(profile, tta, api, env, workdir, *spec)
                   for label, *spec in contain_variants(tta)}
    contain_report(profile, results, workdir)


def contain_variants(tta) -> list[tuple]:
    """(label, server name, table text, what ends the measure, with a fake kubelet)."""
    armed = _armed_table(capture=True)
    return [("label only (label-pod)", "tc-label", tta.LABEL_TABLE, tta.label_patch, False),
            ("packaged, capture-evidence left out", "tc-nocap", _armed_table(capture=False),
             tta.policy_created, False),
            ("packaged default (capture, isolate, label)", "tc-packaged", armed,
             tta.policy_created, False),
            ("packaged default, logs from a kubelet", "tc-kubelet", armed,
             tta.policy_created, True)]


def _armed_table(capture: bool) -> str:
    """The packaged table with `defaults.dry_run: false`, as an operator arms it; without
    capture-evidence when `capture` is false."""
    import yaml

    table = yaml.safe_load(_packaged_table())
    table["defaults"]["dry_run"] = False
    if not capture:
        for rule in table["rules"]:
            rule["actions"] = [a for a in rule["actions"] if a["action"] != "capture-evidence"]
    return yaml.safe_dump(table, sort_keys=False)


def contain_run(profile: Profile, tta, api, env: dict[str, str], workdir: Path, name: str,
                text: str, key, kubelet: bool) -> tuple:
    """One server over its own pods: (latencies at 4/s, in bursts, each burst's last, the
    containment requests it made per alert)."""
    from tests.fakekubelet import FakeKubelet

    alerts, bursts = profile.act_alerts, profile.act_bursts
    cluster = tta.make_pods(api, alerts + bursts * BURST + 1, name, owner="ReplicaSet")
    actions = workdir / f"{name}-actions.yaml"
    actions.write_text(text)
    with ExitStack() as stack:
        if kubelet:
            log = b"".join(b"2026-01-01T00:00:00.000000000Z line %06d of the app's log, as "
                           b"a service writes it\n" % i for i in range(KUBELET_LOG_LINES))
            (workdir / name).mkdir()
            fake = stack.enter_context(FakeKubelet(workdir / name, {("c0", False): log}))
            cluster.core.patch_node_status(cluster.nodes[0], fake.node_status())
        server, = stack.enter_context(serving(workdir, (name, SERVE, {
            **env, "RESPONDER_ACTIONS_FILE": str(actions)})))
        mark = api.audit_mark()
        warm_up(tta, api, server, cluster.namespace, alerts + bursts * BURST, key)
        # Containment takes many requests an alert: the runs may end on the client budget.
        runs = act_runs(tta, api, server, cluster.namespace, alerts, bursts, key, 120.0)
        time.sleep(1.0)  # the last alerts' label PATCHes and Events
        made = [r for r in api.requests_since(mark) if not (
            r.verb == "create" and r.path.endswith("/events"))]
    return (*runs, len(made) / (alerts + bursts * BURST + 1))


def contain_report(profile: Profile, results: dict[str, tuple], workdir: Path) -> None:
    rows = []
    for label, (rate, burst_lat, last, per_alert) in results.items():
        rows.append([label, f"{ALERT_RATE:g}/s", len(rate), *ms3(rate), "-",
                     f"{per_alert:.1f}"])
        rows.append([label, f"burst of {BURST} (x{profile.act_bursts})", len(burst_lat),
                     *ms3(burst_lat), f"{max(last):.0f}" if last else "nan", ""])
    print(f"{profile.act_alerts} alerts at {ALERT_RATE:g}/s, then {profile.act_bursts} burst(s) "
          f"of {BURST}; label only: to the label PATCH; the others: to the NetworkPolicy CREATE")
    table(["table", "alerts", "acted", "p50 ms", "p90 ms", "p99 ms", "20th of a burst ms",
           "requests/alert"], rows)
    print("requests/alert: the responder's API requests but audit Events, all taken from "
          "RESPONDER_KUBE_QPS/BURST")
    (label, _), (nocap, _), (packaged, _), (kubelet, _) = results.items()
    _print_costs(results, nocap, packaged, kubelet)
    extra = _p(results[packaged][0], 0.99) - _p(results[label][0], 0.99)
    print(f"{packaged}: p99 at {ALERT_RATE:g}/s = label only + {extra:.1f} ms (target <= "
          f"+{CONTAIN_TARGET_MS:g} ms: {verdict(extra <= CONTAIN_TARGET_MS)})")
    print("no kubelet behind this apiserver: the packaged runs' log reads fail fast (recorded "
          "in errors.json, e.g. " + _sample_errors(workdir / "tc-packaged-state") + "); the "
          f"kubelet run serves {KUBELET_LOG_LINES:,} lines per log from tests/fakekubelet.py on "
          "loopback; a real kubelet reading a container's log file adds its own time")


def _print_costs(results: dict[str, tuple], nocap: str, packaged: str, kubelet: str) -> None:
    rows = []
    for label in (packaged, kubelet):
        for n, what in ((0, f"{ALERT_RATE:g}/s"), (1, f"burst of {BURST}")):
            mine, without = results[label][n], results[nocap][n]
            rows.append([label, what, *(f"{_p(mine, q) - _p(without, q):+.1f}"
                                        for q in (0.5, 0.9, 0.99))])
    print(f"what capture-evidence costs containment (difference to \"{nocap}\"):")
    table(["table", "alerts", "p50 ms", "p90 ms", "p99 ms"], rows)


def _p(values: list[float], q: float) -> float:
    from bench.time_to_act import percentile as pct

    return pct(values, q)


def _sample_errors(state: Path) -> str:
    """One bundle's errors.json, shortened, as the store has it."""
    found = next(iter(sorted(state.glob("evidence/**/errors.json"))), None)
    if found is None:
        return "no bundle found"
    errors = json.loads(found.read_bytes())
    return "; ".join(f"{k}: {v[:60]}" for k, v in sorted(errors.items())) or "{}"


# --- 5. console pages -------------------------------------------------------------------

CONSOLE_TARGET_MS = 100.0


def section_console(profile: Profile, gen: Generator, workdir: Path) -> None:
    from bench import console_pages as cp

    alerts = profile.console_alerts
    header(f"5. Console pages with {alerts:,} alerts in the journal")
    state = workdir / "console-state"  # where Server("console", ...) keeps its journal
    now = time.time()
    began = time.monotonic()
    uuids = cp.fill_journal(state, alerts, now)
    print(f"journal filled in {time.monotonic() - began:.0f} s: {alerts:,} finished alerts over "
          f"24 h (8 rules, 40 namespaces) and {cp.PENDING} not yet processed, written "
          "through the journal's own intake and closing commits")
    env = {"RESPONDER_AUTH_TOKEN": cp.TOKEN}
    with serving(workdir, ("console", SERVE, env)) as [server]:
        base = f"http://127.0.0.1:{server.port}"
        session, csrf = cp.log_in(base)
        rows = []
        for name, method, path in cp.pages(session, base, uuids, now):
            rows.append(_latency_row(name, cp.time_page(session, base, method, path,
                                                        profile.console_runs)))
        check = cp.time_page(session, base, "POST", "/ui/table/check", profile.console_runs,
                             csrf, {"text": _packaged_table() + cp.EXTRA_RULE, "last": 200})
        rows.append(_latency_row("table check (POST, replays 200 alerts)", check))
        rows += _backlog_rows(profile, workdir, cp, alerts)
    print(f"{profile.console_runs} requests per page after 2 warm-ups, one at a time, logged "
          "in, over loopback; target: p95 < 100 ms")
    table(["page", "p50 ms", "p95 ms", "max ms", "target"], rows)


def _backlog_rows(profile: Profile, workdir: Path, cp, backlog: int) -> list[list[object]]:
    """The pages that read unfinished events, with `backlog` of them waiting (the queue
    worker off, as when it is down)."""
    cp.fill_journal(workdir / "backlog-state", 0, time.time(), pending=backlog)
    env = {"RESPONDER_AUTH_TOKEN": cp.TOKEN, "RESPONDER_WORKER": "off"}
    with serving(workdir, ("backlog", SERVE, env)) as [server]:
        base = f"http://127.0.0.1:{server.port}"
        session, _ = cp.log_in(base)
        return [_latency_row(f"{name}, {backlog:,} waiting", cp.time_page(
                    session, base, "GET", path, profile.console_runs))
                for name, path in (("timeline", "/ui/alerts"), ("overview", "/ui/"),
                                   ("waiting alert", "/ui/alerts/bench-000007"))]


def _latency_row(name: str, took: list[float]) -> list[object]:
    took = sorted(took)
    p95 = percentile(took, 0.95)
    return [name, f"{percentile(took, 0.5):.1f}", f"{p95:.1f}", f"{max(took):.1f}",
            verdict(p95 < CONSOLE_TARGET_MS)]


def _packaged_table() -> str:
    from importlib import resources

    return resources.files("responder").joinpath("default_actions.yaml").read_text("utf-8")


# --- 7. hostile clients -----------------------------------------------------------------

def section_hostile(profile: Profile, gen: Generator, workdir: Path) -> None:
    from tests import slowclients as sc

    count = profile.hostile
    header(f"7. A genuine event while {count:,} hostile connections stall (`responder serve`)")
    if sc.raise_open_files(2 * count + 500) is None:
        print(f"skipped: this process may not hold {2 * count + 500} open files")
        return
    floods = [("none", 0, b"", False),
              ("stalled TLS ClientHellos", count, sc.PARTIAL_CLIENT_HELLO, True),
              ("stalled in 32 KB of headers", count, sc.BIG_PARTIAL_HEADERS, False),
              ("1 MB of a body each, stalled", count * 3 // 10, sc.BODY_HEAD + b"a" * 1_000_000,
               False)]
    rows = [_hostile_row(profile, workdir / f"hostile-{n}", *spec)
            for n, spec in enumerate(floods)]
    print(f"one server per flood; {profile.hostile_posts} genuine events posted one at a time, "
          "each on a new connection, 1 s after the flood is in; targets: every one answered "
          f"202 within {sc.PROMISED_SECONDS:.0f} s, the serving worker grown by less than "
          f"{sc.GROWTH_MIB} MiB")
    table(["flood", "connections", "answered 202", "p50 ms", "max ms", "worker RSS",
           "target"], rows)


def _hostile_row(profile: Profile, directory: Path, name: str, count: int, first_bytes: bytes,
                 tls: bool) -> list[object]:
    import ssl

    from tests import slowclients as sc
    from tests.certs import CA

    directory.mkdir()
    env, context = {}, None
    if tls:
        ca = CA(directory, "ca")
        cert = ca.issue("server", "falco-responder", server=True)
        env = {"RESPONDER_TLS_CERT_FILE": str(cert.cert), "RESPONDER_TLS_KEY_FILE": str(cert.key)}
        context = ssl.create_default_context(cafile=str(ca.files.cert))
    with sc.serve(directory, "https" if tls else "http", context, **env) as server, \
            ExitStack() as stack:
        before = sc.rss_mib(server.worker)
        sc.flood(stack, server.url, count, first_bytes)
        time.sleep(1)
        posts = [sc.genuine_post(server.url, context, timeout=5)
                 for _ in range(profile.hostile_posts)]
        grown = sc.rss_mib(server.worker) - before
    answered = sorted(seconds for status, seconds in posts if status == 202)
    ok = (len(answered) == len(posts) and answered[-1] < sc.PROMISED_SECONDS
          and grown < sc.GROWTH_MIB)
    return [name, count, f"{len(answered)}/{len(posts)}",
            f"{percentile(answered, 0.5) * 1000:.0f}" if answered else "-",
            f"{answered[-1] * 1000:.0f}" if answered else "-",
            f"{before:.0f} MiB, +{grown:.0f}", verdict(ok)]


# --- main -----------------------------------------------------------------------------

SECTIONS = {"throughput": section_throughput, "storm": section_storm,
            "memory": section_memory, "time-to-act": section_time_to_act,
            "console": section_console, "time-to-contain": section_time_to_contain,
            "hostile": section_hostile}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--python-client", action="store_true",
                        help="use the Python load generator even when wrk is installed")
    parser.add_argument("--sections", default="throughput,time-to-act,storm,memory,console,"
                        "time-to-contain,hostile",
                        help="comma-separated subset of: throughput, time-to-act, storm, "
                             "memory, console, time-to-contain, hostile")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="gunicorn threads per worker for every server of section 1 "
                             "(default: the responder's default)")
    parser.add_argument("--act-env", action="append", default=[], metavar="VAR=VALUE",
                        help="section 4: run `responder serve` with this setting (repeatable), "
                             "e.g. RESPONDER_KUBE_QPS=5")
    parser.add_argument("--act-alerts", type=int, metavar="N",
                        help="section 4: alerts at 4/s (default 120, --quick 8)")
    args = parser.parse_args(argv)
    chosen = [SECTIONS[name] for name in args.sections.split(",")]
    profile = replace(QUICK if args.quick else FULL, threads=args.threads,
                      act_env=tuple(tuple(e.split("=", 1)) for e in args.act_env))
    if args.act_alerts:
        profile = replace(profile, act_alerts=args.act_alerts)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="responder-bench-") as tmp:
        workdir = Path(tmp)
        gen = Generator(workdir, args.python_client)
        print(f"falco-responder benchmark{' (--quick)' if args.quick else ''}, "
              f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        print(f"machine: {machine()}; Python {platform.python_version()}")
        print(f"load generator: {gen.describe()}; everything on 127.0.0.1, "
              f"generator and servers share the CPUs")
        took = []
        for section in chosen:
            begun = time.monotonic()
            section(profile, gen, workdir)
            took.append(f"{time.monotonic() - begun:.0f} s")
    print(f"\ndone in {time.monotonic() - started:.0f} s (sections: {', '.join(took)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
