"""Prometheus metrics, in a registry owned by one app (never the global default registry)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# Set by `responder serve` for its server and worker processes: prometheus-client then
# keeps every value in files there, and a scrape of any process adds them all up.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Distinct (rule, priority, source) series of responder_events_received one process keeps;
#: past it, an event counts under rule "other". The rule name is the sender's to choose, so
#: the bound is on the combinations, not on each label (500 rules x 50 sources x 8
#: priorities was 200,000 series, and about 80,000 filled the 32 MiB /dev/shm volume).
#: One series takes about 300 bytes of a multiprocess file (a 128-character rule, the
#: longest source and priority: the JSON key padded to 8 bytes, the value, its timestamp):
#: 1,000 of them (and 8 "other") measured 300 KiB of memory in a 512 KiB sparse counter
#: file. Dead processes' files stay until `responder serve` stops: the 32 MiB /dev/shm
#: volume holds that worst case for some 50 process lifetimes even counted at full file
#: size (counter, gauge and histogram files together under 0.7 MiB), against two processes
#: and occasional respawns. Falco's default rules number about 80, plugins add a few dozen.
MAX_EVENT_SERIES = 1_000
#: The `source` values Falco and its plugins send (FALCO-EVENTS.md); anything else is "other".
KNOWN_SOURCES = frozenset({"syscall", "k8s_audit", "aws_cloudtrail", "okta", "github",
                           "gcp_auditlog", "docker", "nomad", "keycloak", "internal"})
OTHER = "other"


class Metrics:
    """Every metric the responder exports; passed to whoever counts."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        r = self.registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._event_series: set[tuple[str, str, str]] = set()
        self._series_lock = threading.Lock()
        self.events = Counter("responder_events_received", "Falco events accepted",
                              ["rule", "priority", "source"], registry=r)
        self.rejected = Counter("responder_requests_rejected",
                                "Requests refused, by HTTP status", ["status"], registry=r)
        self.outcomes = Counter("responder_action_outcomes", "Action outcomes",
                                ["action", "outcome"], registry=r)
        self.action_seconds = Histogram("responder_action_duration_seconds",
                                        "Time spent in one Kubernetes action", ["action"],
                                        registry=r)
        self.audit_events = Counter("responder_audit_events",
                                    "Audit Kubernetes Events: recorded, failed (the API refused "
                                    "or did not answer), dropped (never sent: queue full, or "
                                    "still queued at shutdown)", ["outcome"], registry=r)
        self.slack = Counter("responder_slack_notifications", "Slack notifications by outcome",
                             ["outcome"], registry=r)
        self.approvals = Counter("responder_approvals", "Verdicts on events awaiting approval: "
                                 "approved, rejected or timed-out, given over slack, http or "
                                 "by the timeout", ["decision", "via"], registry=r)
        # Across processes: 0 if any live process failed its last reload.
        self.table_valid = Gauge("responder_action_table_valid",
                                 "1 when the table file on disk loaded, 0 when the last "
                                 "reload failed (the last good table stays in use)",
                                 registry=r, multiprocess_mode="livemin")
        self.table_refused = Gauge("responder_action_table_refused",
                                   "1 while the named table file is refused (invalid) and the "
                                   "last good table serves instead", ["file"], registry=r,
                                   multiprocess_mode="livemax")
        self.table_reload_errors = Counter("responder_action_table_reload_errors",
                                           "Reloads refused because the new table is invalid",
                                           registry=r)
        self.intake = Counter("responder_events_intake", "Events at intake: queued, duplicate, "
                              "dropped (queue full)", ["status"], registry=r)
        self.limit_trips = Counter("responder_guardrail_trips",
                                   "Actions skipped because a blast-radius limit tripped",
                                   ["limit"], registry=r)
        self.queue = QueueCollector()
        r.register(self.queue)
        self.retries = Counter("responder_event_retries",
                               "Events put back in the queue after a transient failure",
                               registry=r)
        self.table_rules = Gauge("responder_action_table_rules", "Rules in the table in use",
                                 registry=r, multiprocess_mode="livemax")

    def inc(self, counter: Counter, *labels: str) -> None:
        """`counter.labels(*labels).inc()`, the child looked up once: `labels` checks its
        arguments and takes a lock on every call, a cost paid per event and per decision.
        As many children are kept as the metric itself has series; nothing here removes
        a series (`remove`/`clear`), which would leave a cached child counting unseen."""
        key = (id(counter), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, counter.labels(*labels))
        child.inc()

    def count_event(self, rule: str, priority: str, source: str) -> None:
        """Count one event received. `rule` should already be cut to label length;
        `priority` is one of Falco's eight. The first MAX_EVENT_SERIES combinations get a
        series each; later new ones share rule "other" (with their priority and source)."""
        source = source if source in KNOWN_SOURCES else OTHER
        key = (rule, priority, source)
        if key not in self._event_series:
            with self._series_lock:
                if len(self._event_series) < MAX_EVENT_SERIES:
                    self._event_series.add(key)
                else:
                    key = (OTHER, priority, source)
        self.inc(self.events, *key)

    def watch_queue(self, state: Callable[[], tuple[float, float]]) -> None:
        """Read the queue's depth and oldest age (one call) when scraped, not per event."""
        self.queue.state = state

    def exposition(self) -> bytes:
        """The text a scrape of /metrics gets: this process's metrics, or under
        `responder serve` those of the server and worker processes together."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        registry.register(self.queue)  # read from the shared journal, not from files
        return generate_latest(registry)


class QueueCollector(Collector):
    """Queue depth and oldest-pending age, read from the journal at scrape time."""

    def __init__(self) -> None:
        self.state: Callable[[], tuple[float, float]] = lambda: (0.0, 0.0)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth, oldest = self.state()
        yield GaugeMetricFamily("responder_queue_depth", "Events recorded but not finished",
                                value=depth)
        yield GaugeMetricFamily("responder_queue_oldest_pending_seconds",
                                "Age of the oldest unfinished event", value=oldest)
