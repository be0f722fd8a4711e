"""Label bombs: sender-chosen rule names and sources are bounded in length and number as
metric labels, so hostile values keep memory and metrics files flat; log lines about an
event quote its values cut short; unknown uuids are counted as refused requests."""

import gc
import json
import logging
import os
import re
import tracemalloc
from pathlib import Path

import pytest
import requests

from responder.events import parse_event
from responder.metrics import MAX_EVENT_SERIES
from responder.service import MAX_LABEL_LENGTH

from .serving import served

BOMB = 900 * 1024  # the size of rule name that grew the serving process by 130-200 MiB
TABLE = """
defaults: {dry_run: true}
rules:
  - {name: r, match: {rules: ["*"]}, actions: [{action: label-pod, params: {labels: {a: b}}}]}
"""


def bomb(i: int, size: int = BOMB) -> bytes:
    return json.dumps({"uuid": f"bomb-{i}", "rule": f"{i:04d}" + "R" * size,
                       "priority": "Notice", "source": f"{i:04d}" + "S" * 10_000,
                       "output_fields": {"k8s.pod.name": "p" * 50_000,
                                         "k8s.ns.name": "shop"}}).encode()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def label_values(text: str, name: str) -> list[str]:
    return re.findall(rf'{name}="([^"]*)"', text)


@pytest.mark.slow
def test_huge_rule_names_keep_the_process_and_the_metrics_flat(make_app, make_table):
    app = make_app(make_table(TABLE), max_body_bytes=2 * 1024 * 1024)
    client = app.test_client()
    # Warm up: the allocator keeps megabyte-sized request buffers for reuse (about 40 MiB
    # here, over the first 60 or so), then stays put; kept labels grow with every name.
    for i in range(60):
        assert client.post("/", data=bomb(i)).status_code == 202
    before = rss_bytes()
    for i in range(60, 120):
        assert client.post("/", data=bomb(i)).status_code == 202
    grown = rss_bytes() - before
    text = client.get("/metrics").get_data(as_text=True)
    rules = label_values(text, "rule")
    assert len(set(rules)) == 120 and all(len(r) <= MAX_LABEL_LENGTH for r in rules)
    assert all(len(s) <= MAX_LABEL_LENGTH for s in label_values(text, "source"))
    assert len(text) < 200_000
    # Sixty 900 KB labels kept would be 54 MiB at the least (about 60 MiB measured).
    assert grown < 20 * 1024 * 1024, f"grew {grown / 2**20:.1f} MiB"


def test_long_rule_names_sharing_a_beginning_stay_apart(make_app, make_table):
    app = make_app(make_table(TABLE), max_body_bytes=2 * 1024 * 1024)
    client = app.test_client()
    for i in range(3):
        name = "R" * 5000 + str(i)
        client.post("/", data=json.dumps({"rule": name, "priority": "Notice",
                                          "output_fields": {}}))
    rules = label_values(client.get("/metrics").get_data(as_text=True), "rule")
    assert len(set(rules)) == 3 and all(len(r) <= MAX_LABEL_LENGTH for r in rules)


def test_log_lines_quote_a_hostile_event_cut_short(make_app, make_table, logs, monkeypatch):
    app = make_app(make_table(TABLE), max_body_bytes=2 * 1024 * 1024, intake="inline")
    # The app's log set-up stops propagation; caplog listens at the root.
    monkeypatch.setattr(logging.getLogger("responder"), "propagate", True)
    logs.clear()
    assert app.test_client().post("/", data=bomb(0, 200_000)).status_code == 200
    lines = [r for r in logs.records if r.name.startswith("responder")]
    decision = next(r for r in lines if hasattr(r, "decision"))
    assert len(decision.getMessage()) < 2000
    assert len(json.dumps(decision.decision)) < 2000
    received = next(r for r in lines if hasattr(r, "event"))
    assert len(received.getMessage()) < 2000
    # The event's own record is the audit trail: it keeps the rule whole.
    assert len(received.event["rule"]) == 200_004


def test_unknown_event_uuids_are_counted_as_refused(make_app, make_table):
    client = make_app(make_table(TABLE)).test_client()
    for _ in range(3):
        reply = client.get("/events/" + "n" * 10_000)
        assert reply.status_code == 404 and len(reply.get_data()) < 500
    text = client.get("/metrics").get_data(as_text=True)
    assert 'responder_requests_rejected_total{status="404"} 3.0' in text


@pytest.mark.slow
def test_served_metrics_files_stay_small_under_label_bombs(tmp_path):
    state = tmp_path / "state"
    env = {"RESPONDER_STATE_DIR": str(state), "RESPONDER_MAX_BODY_BYTES": str(2 * 1024 * 1024),
           "RESPONDER_LOG_LEVEL": "WARNING", "RESPONDER_METRICS_DIR": str(tmp_path / "shm")}
    with served(env) as url, requests.Session() as session:
        for i in range(60):
            reply = session.post(url + "/", data=bomb(i),
                                 headers={"Content-Type": "application/json"}, timeout=10)
            assert reply.status_code == 202, reply.text
        text = session.get(url + "/metrics", timeout=10).text
        # Measured while serving: `responder serve` removes them when it stops.
        files = list(Path(tmp_path, "shm").glob("*/*.db"))
        size = sum(f.stat().st_size for f in files)
    assert len(label_values(text, "rule")) == 60
    assert files, "no metrics files where RESPONDER_METRICS_DIR points"
    # Before: tens of MiB (each file holds every label; it grows by doubling).
    assert size < 4 * 1024 * 1024, f"metrics files hold {size / 2**20:.1f} MiB"



PRIORITIES = ["Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational",
              "Debug"]


def combination_bomb(count: int, start: int = 0) -> list[bytes]:
    """Events whose (rule, source, priority) are all different: 8 priorities under each
    rule, 20 sources in turn, rules and sources long. Each label alone has few enough values
    for a per-label bound (500 rules, 50 sources); their product does not."""
    bodies = []
    for n in range(start, start + count):
        rule, source, priority = n // 8, n // 8 % 20, PRIORITIES[n % 8]
        bodies.append(json.dumps({"rule": f"R{rule:05d}" + "x" * 300, "priority": priority,
                                  "source": f"S{source:02d}" + "y" * 300,
                                  "output_fields": {}}).encode())
    return bodies


def event_series(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if line.startswith("responder_events_received_total{")]


@pytest.mark.slow
def test_label_combinations_are_bounded_so_memory_and_metrics_stay_flat(make_app, make_table):
    app = make_app(make_table(TABLE))
    responder, client = app.extensions["responder"], app.test_client()

    def count(bodies: list[bytes]) -> None:
        for body in bodies:  # what the intake does with each event it takes in
            responder.count_received(parse_event(body, "application/json"))

    count(combination_bomb(2 * MAX_EVENT_SERIES))
    full = client.get("/metrics").get_data()
    # What the metrics code keeps, traced to its allocations: the process's RSS would also
    # count whatever the suite's earlier tests left to other threads and the allocator.
    tracemalloc.start()
    try:
        before = kept_by_metrics(tracemalloc.take_snapshot())
        count(combination_bomb(20_000, start=2 * MAX_EVENT_SERIES))
        gc.collect()
        grown = kept_by_metrics(tracemalloc.take_snapshot()) - before
    finally:
        tracemalloc.stop()
    text = client.get("/metrics").get_data(as_text=True)
    series = event_series(text)
    # The cap, and "other" for each priority (unknown sources are all "other").
    assert len(series) <= MAX_EVENT_SERIES + len(PRIORITIES)
    assert len(text) - len(full) < 1000
    assert sum('rule="other"' in line for line in series) == len(PRIORITIES)
    assert {s for line in series for s in label_values(line, "source")} == {"other"}
    # 20,000 more series kept were about 40 MiB.
    assert grown < 1024 * 1024, f"grew {grown / 2**20:.1f} MiB"


def kept_by_metrics(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes allocated by prometheus-client and the responder's own code, still alive."""
    wanted = snapshot.filter_traces([tracemalloc.Filter(True, "*prometheus_client*"),
                                     tracemalloc.Filter(True, "*/responder/*")])
    return sum(stat.size for stat in wanted.statistics("filename"))


def blocks(directory: Path) -> int:
    """Bytes the metrics files really take (they are sparse, and mapped from memory)."""
    return sum(f.stat().st_blocks * 512 for f in directory.glob("*/*.db"))


@pytest.mark.slow
def test_served_metrics_files_stay_flat_under_a_label_combination_bomb(tmp_path):
    shm = tmp_path / "shm"
    env = {"RESPONDER_STATE_DIR": str(tmp_path / "state"), "RESPONDER_LOG_LEVEL": "WARNING",
           "RESPONDER_METRICS_DIR": str(shm)}
    headers = {"Content-Type": "application/json"}
    with served(env) as url, requests.Session() as session:
        for body in combination_bomb(MAX_EVENT_SERIES + 200):
            assert session.post(url + "/", data=body, headers=headers, timeout=10).ok
        full = blocks(shm)
        for body in combination_bomb(3000, start=MAX_EVENT_SERIES + 200):
            assert session.post(url + "/", data=body, headers=headers, timeout=10).ok
        text = session.get(url + "/metrics", timeout=10).text
        grown = blocks(shm) - full
    assert len(event_series(text)) <= MAX_EVENT_SERIES + len(PRIORITIES)
    # 3,000 more series were about 1 MiB more of /dev/shm.
    assert grown < 64 * 1024, f"metrics files grew {grown / 1024:.0f} KiB"
