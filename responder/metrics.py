"""Prometheus metrics, in a registry owned by one app (never the global default registry)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Every metric the responder exports; passed to whoever counts."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
        self.table_valid = Gauge("responder_action_table_valid",
                                 "1 when the table file on disk loaded, 0 when the last "
                                 "reload failed (the last good table stays in use)",
                                 registry=r)
        self.table_reload_errors = Counter("responder_action_table_reload_errors",
                                           "Reloads refused because the new table is invalid",
                                           registry=r)
        self.intake = Counter("responder_events_intake", "Events at intake: queued, duplicate, "
                              "dropped (queue full)", ["status"], registry=r)
        self.limit_trips = Counter("responder_guardrail_trips",
                                   "Actions skipped because a blast-radius limit tripped",
                                   ["limit"], registry=r)
        self.queue_depth = Gauge("responder_queue_depth", "Events recorded but not finished",
                                 registry=r)
        self.queue_oldest = Gauge("responder_queue_oldest_pending_seconds",
                                  "Age of the oldest unfinished event", registry=r)
        self.retries = Counter("responder_event_retries",
                               "Events put back in the queue after a transient failure",
                               registry=r)
        self.table_rules = Gauge("responder_action_table_rules", "Rules in the table in use",
                                 registry=r)

    def watch_queue(self, depth: Callable[[], float], oldest: Callable[[], float]) -> None:
        """Read the queue's depth and age when scraped, not on every event."""
        self.queue_depth.set_function(depth)
        self.queue_oldest.set_function(oldest)
