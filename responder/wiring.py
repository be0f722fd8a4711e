"""Builds the responder's parts from settings: one function for the web process
(`create_app`) and the queue worker process (`responder work`), so neither can leave a part out."""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient

from . import kube
from .actions import Registry, default_registry
from .errors import ConfigError
from .evidencestore import open_store
from .journal import EventStore
from .lastgood import StartupTable, keep_copy, load_startup_table
from .localstate import LocalState
from .logs import configure_logging
from .metrics import Metrics
from .notify import SlackConfig, SlackNotifier, slack_status
from .relay import Relay, UndoServer, replica_id
from .reload import TableReloader
from .service import Responder
from .settings import Settings
from .shared import RedisState, SharedState
from .spool import SpoolWriter
from .table import Table
from .undo import Undoer
from .worker import Worker

logger = logging.getLogger(__name__)
#: "Not given: build it from settings" (None means "none": no cluster, Slack off).
UNSET: Any = object()


@dataclass
class Components:
    """Everything a process of the responder runs with, built by `build_components`."""

    settings: Settings
    registry: Registry
    startup: StartupTable
    responder: Responder
    store: EventStore
    worker: Worker
    #: Where the intake spools events and the worker takes them from.
    spool_dir: Path
    #: Where the Kubernetes client points, said at startup.
    where: str
    slack: SlackConfig | None
    #: Undoes recorded events (`POST /events/<uuid>/undo`, and whatever else asks).
    undoer: Undoer
    #: Verdicts and undos passed between replicas (None: no Redis, one replica).
    relay: Relay | None = None

    @property
    def metrics(self) -> Metrics:
        return self.responder.metrics

    @property
    def shared(self) -> SharedState:
        return self.responder.shared


def build_components(settings: Settings, *, table: Table | None = None,
                     registry: Registry | None = None, api_client: ApiClient | None = UNSET,
                     slack: SlackConfig | None = UNSET) -> Components:
    """The parts for `settings`; tests pass their own table, registry, client or Slack.
    Starts nothing: the caller starts the worker and the reloader it wants."""
    configure_logging(settings.log.format, settings.log.level)
    registry = registry or default_registry()
    state_dir = Path(settings.storage.state_dir).expanduser()
    # Before the journal is opened: a store that cannot be built stops the start cleanly.
    evidence = open_store(settings.storage.evidence_url, settings.storage.evidence_endpoint_url,
                          state_dir)
    startup = StartupTable(table) if table else \
        load_startup_table(settings.table.actions_file, registry, state_dir)
    if settings.intake.mode == "inline" and startup.table.needs_approval:
        raise ConfigError(f"{startup.table.source}: a table rule asks for approval, but "
                          "RESPONDER_INTAKE=inline acts before replying and cannot wait for "
                          "one; use RESPONDER_INTAKE=queue")
    if api_client is UNSET:
        api_client, where = kube.connect(settings)
    else:
        where = "given" if api_client is not None else "no cluster"
    slack = settings.slack if slack is UNSET else slack
    metrics = Metrics()
    store = EventStore(state_dir, settings.intake.max_pending, settings.intake.drop_policy)
    shared = connect_shared(settings, store)
    notifier = SlackNotifier(slack, on_result=lambda r: metrics.inc(metrics.slack, r),
                             undoable=registry.undoable()) \
        if slack else None
    responder = Responder(settings, startup.table, registry, api_client, metrics=metrics,
                          store=store, shared=shared, notifier=notifier, evidence=evidence)
    spool_dir = store.path.parent / "spool"
    worker = Worker(responder, store, settings.intake.max_attempts,
                    sync_seconds=settings.storage.sync_seconds,
                    retention_seconds=settings.storage.retention_seconds,
                    lease_seconds=settings.intake.lease_seconds, spool_dir=spool_dir)
    log_startup(responder, where, slack_status(slack))
    undoer = build_undoer(responder)
    relay = connect_relay(shared, store, worker, undoer)
    return Components(settings, registry, startup, responder, store, worker, spool_dir, where,
                      slack, undoer, relay)


def connect_relay(shared: SharedState, store: EventStore, worker: Worker,
                  undoer: Undoer) -> Relay | None:
    """With Redis (several replicas): verdicts and undos for another replica's events are
    passed to it; this replica is named by its state dir, shared by its processes."""
    if not isinstance(shared, RedisState):
        return None
    relay = Relay(shared.redis, shared.prefix, replica_id(store.path.parent))
    worker.relay = undoer.relay = relay
    worker.undo_server = UndoServer(relay, undoer.undo_here)
    logger.info("replica %s: verdicts, undos and reads of other replicas' events pass "
                "through Redis", relay.owner)
    return relay


def build_undoer(responder: Responder) -> Undoer:
    """Undo with the actions, retries, audit recorder and Slack the responder acts with."""
    executor = responder.executor
    return Undoer(responder.store, executor.actions, responder.shared,
                  registry=responder.registry, recorder=responder.recorder,
                  notifier=responder.notifier, retry=executor.retry,
                  idle_reason=executor.idle_reason or "no Kubernetes cluster configured",
                  # All request threads but one: events always find a thread.
                  max_running=responder.settings.intake.threads - 1)


def connect_shared(settings: Settings, store: EventStore) -> SharedState:
    """The shared Redis when one is set (its credentials checked), else this replica's own."""
    storage = settings.storage
    if not storage.redis_url:
        return LocalState(store)
    shared = RedisState(storage.redis_url, username=storage.redis_username,
                        password=storage.redis_password)
    try:
        shared.check()
    except ConfigError:
        shared.close()
        store.close()  # the caller gets no parts to shut down
        raise
    return shared


def watch_queue(parts: Components, spool: SpoolWriter | None) -> None:
    """Report the queue's depth and oldest age in this process's metrics."""
    parts.metrics.watch_queue(lambda: queue_state(parts.store, spool))


def queue_state(store: EventStore, spool: SpoolWriter | None) -> tuple[float, float]:
    """Queue depth and oldest age, counting what this process spooled and the worker has
    not yet taken in: with the worker down, that is where events wait."""
    try:
        unread, written = spool.unread(store.spooled_records) if spool else (0, None)
        age = store.oldest_pending_age()
        depth = store.pending()
    except sqlite3.Error as exc:  # a full or read-only volume: /metrics still answers
        logger.warning("cannot read the queue's state from the journal: %s", exc)
        return math.nan, math.nan
    if written is not None:
        age = max(age, time.time() - written)
    return depth + unread, age


def start_reloader(parts: Components) -> TableReloader | None:
    """Watch the table file (not the packaged default, which cannot change)."""
    settings, responder, startup = parts.settings, parts.responder, parts.startup
    metrics = responder.metrics
    # 1 for the packaged default too: what serves is valid, and nothing is pending.
    metrics.table_valid.set(0 if startup.refused else 1)
    if not settings.table.actions_file:
        return None
    state_dir = Path(settings.storage.state_dir).expanduser()
    source = settings.table.actions_file
    refused = metrics.table_refused.labels(source)
    refused.set(1 if startup.refused else 0)

    def apply(table: Table) -> None:
        responder.table = table
        metrics.table_valid.set(1)
        refused.set(0)

    def refuse(problems: list[str]) -> None:
        metrics.table_valid.set(0)
        refused.set(1)
        metrics.table_reload_errors.inc()

    reloader = TableReloader(source, responder.registry, apply, refuse,
                             keep=lambda text: keep_copy(state_dir, source, text),
                             refused=startup.refused.problems if startup.refused else None)
    if settings.table.reload_seconds > 0:
        reloader.start(settings.table.reload_seconds)
    return reloader


def stop_components(parts: Components, reloader: TableReloader | None,
                    timeout: float = 10.0) -> None:
    """Stop the worker, act on what is due, record the queued audit Events, send what
    Slack still owes, close the journal. The caller has stopped taking events in."""
    parts.worker.stop(timeout)
    parts.worker.drain(timeout)
    parts.responder.close(timeout)
    if reloader:
        reloader.stop()
    responder = parts.responder
    if responder.notifier:
        responder.notifier.close(timeout)
    if hasattr(responder.shared, "close"):
        responder.shared.close()
    parts.store.close()


def log_startup(responder: Responder, where: str, slack: str) -> None:
    logger.info("settings: %s", responder.settings.describe())
    logger.info("action table %s: %d rule(s); cluster: %s",
                responder.table.source, len(responder.table.rules), where)
    logger.info("intake: %s, journal %s; %s", responder.settings.intake.mode,
                responder.store.path if responder.store else "-", slack)
    if not responder.armed:
        logger.warning("DRY-RUN: no action will change the cluster (%s)", dry_run_cause(responder))


def dry_run_cause(responder: Responder) -> str:
    if responder.settings.table.force_dry_run:
        return "RESPONDER_DRY_RUN=true"
    if responder.api_client is None:
        return "no Kubernetes cluster configured"
    return "every table rule is dry-run; set dry_run: false in the table to arm it"
