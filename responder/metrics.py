"""Prometheus metrics, in a registry owned by one app (never the global default registry)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# Set by `responder serve` for its server and worker processes: prometheus-client then
# keeps every value in files there, and a scrape of any process adds them all up.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """Every metric the responder exports; passed to whoever counts."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        r = self.registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.events = Counter("responder_events_received", "Falco events accepted",
                              ["rule", "priority", "source"], registry=r)
        self.rejected = Counter("responder_requests_rejected",
                                "Requests refused, by HTTP status", ["status"], registry=r)
        self.outcomes = Counter("responder_action_outcomes", "Action outcomes",
                                ["action", "outcome"], registry=r)
        self.action_seconds = Histogram("responder_action_duration_seconds",
                                        "Time spent in one Kubernetes action", ["action"],
                                        registry=r)
        self.slack = Counter("responder_slack_notifications", "Slack notifications by outcome",
                             ["outcome"], registry=r)
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
