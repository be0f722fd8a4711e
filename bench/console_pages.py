"""Console page latency with a full journal: alerts written as the worker writes them (the
journal's intake and closing commits, summaries included), then every console page timed
over HTTP against `responder serve`, logged in."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path

import requests

from responder.actions import Target
from responder.alerts import summarize
from responder.events import event_from_dict
from responder.journal import Closing, EventStore

TOKEN = "bench-console-token"
RULES = [  # (Falco rule, priority, share of alerts)
    ("Terminal shell in container", "Notice", 40),
    ("Read sensitive file untrusted", "Warning", 20),
    ("Contact K8S API Server From Container", "Notice", 15),
    ("Drop and execute new binary in container", "Critical", 10),
    ("Netcat Remote Code Execution in Container", "Warning", 8),
    ("Launch Privileged Container", "Informational", 5),
    ("Packet socket created in container", "Notice", 1),
    ("Detect release_agent File Container Escapes", "Critical", 1),
]
OUTCOMES = ["would-run"] * 60 + ["done"] * 15 + ["already-done"] * 8 + ["skipped"] * 8 + \
    ["coalesced"] * 6 + ["failed"] * 1 + [None] * 2
PENDING = 20  # events left unfinished: the timeline's queue block reads them from `events`
BATCH = 2_000
# The change the table check tries: shells labelled by one more rule (the packaged table's
# first rules stop at a match with `continue: false`, so not every shell changes).
EXTRA_RULE = """
  - name: bench-label-shells
    match: {rules: ["Terminal shell in container"]}
    actions:
      - action: label-pod
        params: {labels: {bench: "true"}}
"""


def _weighted_rules() -> list[tuple[str, str]]:
    return [(rule, priority) for rule, priority, share in RULES for _ in range(share)]


def fill_journal(state_dir: Path, count: int, now: float, pending: int = PENDING
                 ) -> list[str]:
    """`count` alerts received over the last 24 hours (oldest first) and `pending` more not
    yet finished; returns the uuids of the finished ones."""
    rules = _weighted_rules()
    store = EventStore(state_dir, max_pending=count + pending + 10)
    first = now - 86400 + 600  # inside the retention, with room for the run
    step = (86400 - 1200) / (count + pending)
    times = (first + i * step for i in itertools.count())
    uuids: list[str] = []
    try:
        for start in range(0, count + pending, BATCH):
            n = min(BATCH, count + pending - start)
            records, alerts = [], {}
            for i in range(start, start + n):
                rule, priority = rules[i % len(rules)]
                body = _event(i, rule, priority)
                records.append((body["uuid"], json.dumps(body).encode()))
                alerts[body["uuid"]] = body
            store.clock = lambda: next(times)
            store.take_in(f"bench-{start}", 0, 1, records)
            store.clock = time.time
            done = min(n, max(0, count - start))
            if done:
                uuids += _finish(store, done, alerts)
        return uuids
    finally:
        store.close()


def _finish(store: EventStore, n: int, alerts: dict) -> list[str]:
    closings = []
    for item in store.claim(n, 600):
        body = alerts[item.key]
        fields = body["output_fields"]
        outcome = OUTCOMES[item.id % len(OUTCOMES)]
        target = {"namespace": fields["k8s.ns.name"], "pod": fields["k8s.pod.name"]}
        reports = {} if outcome is None else {0: {
            "action": "label-pod", "target": target, "outcome": outcome,
            "slot": "label-everything:label-pod#1", "reason": "bench"}}
        summary = summarize(event_from_dict(body),
                            Target(target["namespace"], target["pod"], body["hostname"]),
                            item.received, [] if outcome is None else ["label-everything"],
                            [] if outcome is None else [("label-pod", outcome)])
        closings.append(Closing(item.id, "failed" if outcome == "failed" else "done", None,
                                reports, summary=summary))
    store.finish_many(closings)
    return [item.summary.key for item in closings]


def _event(i: int, rule: str, priority: str) -> dict:
    namespace, pod = f"team-{i % 40}", f"web-{i % 997}"
    return {"uuid": f"bench-{i:06d}", "rule": rule, "priority": priority, "source": "syscall",
            "hostname": f"node-{i % 25}", "output": f"{rule} (pod={pod} ns={namespace})",
            "output_fields": {"k8s.ns.name": namespace, "k8s.pod.name": pod,
                              "proc.cmdline": "bash -i", "container.id": f"{i:012x}"}}


def log_in(base: str) -> tuple[requests.Session, str]:
    """A logged-in session and its CSRF token."""
    session = requests.Session()
    form = session.get(base + "/ui/login", timeout=10).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    reply = session.post(base + "/ui/login", data={"token": TOKEN, "csrf": csrf},
                         timeout=10, allow_redirects=False)
    assert reply.status_code == 302, reply.text
    page = session.get(base + "/ui/table", timeout=10).text
    return session, re.search(r'data-csrf="([^"]+)"', page).group(1)


def pages(session: requests.Session, base: str, uuids: list[str], now: float
          ) -> list[tuple[str, str, str]]:
    """(name, method, path) of every page worth timing; a 4th page of the timeline is
    found by following the 'older' links."""
    path = "/ui/alerts"
    for _ in range(4):
        found = re.search(r'id="older" href="([^"]+)"', session.get(base + path, timeout=10).text)
        path = found.group(1).replace("&amp;", "&")
    hour = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now - 12 * 3600))
    hour_end = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now - 11 * 3600))
    middle = uuids[len(uuids) // 2]
    return [
        ("overview (24 h charts)", "GET", "/ui/"),
        ("timeline, newest", "GET", "/ui/alerts"),
        ("timeline, 5th page (cursor)", "GET", path),
        ("timeline refresh (rows partial)", "GET", "/ui/alerts/rows"),
        ("filter: rare rule (1%)", "GET",
         "/ui/alerts?rule=Detect+release_agent+File+Container+Escapes"),
        ("filter: namespace", "GET", "/ui/alerts?namespace=team-7"),
        ("filter: priority", "GET", "/ui/alerts?priority=Critical"),
        ("filter: outcome failed (1%)", "GET", "/ui/alerts?outcome=failed"),
        ("filter: state failed", "GET", "/ui/alerts?state=failed"),
        ("filter: one hour, 12 h ago", "GET", f"/ui/alerts?since={hour}&until={hour_end}"),
        ("filter: rule + namespace", "GET",
         "/ui/alerts?rule=Terminal+shell+in+container&namespace=team-3"),
        ("filter: outcome + namespace", "GET", "/ui/alerts?outcome=done&namespace=team-9"),
        ("alert page", "GET", f"/ui/alerts/{middle}"),
        ("alert's audit Events (no cluster)", "GET", f"/ui/alerts/{middle}/audit"),
        ("table page", "GET", "/ui/table"),
    ]


def time_page(session: requests.Session, base: str, method: str, path: str, runs: int,
              csrf: str = "", body: dict | None = None) -> list[float]:
    """Milliseconds per request, after two warm-ups; each must answer 200."""
    took = []
    for n in range(runs + 2):
        began = time.perf_counter()
        if method == "GET":
            reply = session.get(base + path, timeout=30)
        else:
            reply = session.post(base + path, json=body, headers={"X-CSRF-Token": csrf},
                                 timeout=30)
        elapsed = (time.perf_counter() - began) * 1000
        if reply.status_code != 200:
            raise RuntimeError(f"{method} {path}: HTTP {reply.status_code}: {reply.text[:300]}")
        if n >= 2:
            took.append(elapsed)
    return took
