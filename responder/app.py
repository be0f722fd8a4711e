"""The Flask app factory: the webhook Falcosidekick calls, and the health endpoints."""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from kubernetes.client import ApiClient
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException

from . import kube
from .actions import Registry, default_registry
from .auth import TokenAuth
from .errors import EventError, StorageError
from .events import parse_event
from .intake import Intake
from .journal import EventStore
from .lastgood import StartupTable, keep_copy, load_startup_table
from .localstate import LocalState
from .logs import clipped, configure_logging
from .metrics import Metrics
from .notify import SlackConfig, SlackNotifier, slack_status
from .reload import TableReloader
from .service import Responder
from .settings import Settings
from .shared import RedisState
from .spool import SpoolWriter
from .table import Table
from .wakeup import WakeListener, WakeSender, Wakeups
from .worker import Worker

logger = logging.getLogger(__name__)
_UNSET: Any = object()
EVENT_METHODS = ["POST", "PUT"]  # Falcosidekick's webhook.method may be PUT
EVENT_ENDPOINTS = {"receive_root": "/", "receive_events": "/events"}


def create_app(settings: Settings | None = None, *, table: Table | None = None,
               registry: Registry | None = None, api_client: ApiClient | None = _UNSET,
               slack: SlackConfig | None = _UNSET, start_worker: bool = True) -> Flask:
    """Build the app. Nothing happens at import; gunicorn runs `responder.app:create_app()`.

    Tests pass their own parts; `start_worker=False` leaves the queue to `worker.run_pending`.
    """
    settings = settings or Settings.from_env()
    configure_logging(settings.log.format, settings.log.level)
    registry = registry or default_registry()
    state_dir = Path(settings.storage.state_dir).expanduser()
    startup = StartupTable(table) if table else \
        load_startup_table(settings.table.actions_file, registry, state_dir)
    if api_client is _UNSET:
        api_client, where = kube.connect(settings)
    else:
        where = "given" if api_client is not None else "no cluster"
    slack = settings.slack if slack is _UNSET else slack
    metrics = Metrics()
    store = EventStore(state_dir, settings.intake.max_pending, settings.intake.drop_policy)
    redis_url = settings.storage.redis_url
    shared = RedisState(redis_url) if redis_url else LocalState(store)
    notifier = SlackNotifier(slack, on_result=lambda r: metrics.inc(metrics.slack, r)) \
        if slack else None
    responder = Responder(settings, startup.table, registry, api_client, metrics=metrics,
                          store=store, shared=shared, notifier=notifier)
    spool_dir = store.path.parent / "spool"
    worker = Worker(responder, store, settings.intake.max_attempts,
                    sync_seconds=settings.storage.sync_seconds,
                    retention_seconds=settings.storage.retention_seconds,
                    lease_seconds=settings.intake.lease_seconds, spool_dir=spool_dir)
    log_startup(responder, where, slack_status(slack))

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.intake.max_body_bytes
    spool = SpoolWriter(spool_dir) if settings.intake.mode == "queue" else None
    app.extensions.update(responder=responder, worker=worker, store=store, spool=spool,
                          reloader=_start_reloader(settings, responder, startup))
    metrics.watch_queue(lambda: _queue_state(store, spool))
    intake = None
    if spool is not None:
        # Our own worker (if any) and the queue worker process of `responder serve`.
        sender = app.extensions["wake_sender"] = WakeSender(spool_dir)
        intake = Intake(responder, store, spool, shared, Wakeups(worker.wake, sender),
                        settings.storage.retention_seconds)
        if start_worker:
            spool.start_sync(settings.storage.sync_seconds)
            # "process" is `responder serve`'s to honour (it runs its server with "off");
            # served any other way, this process runs the queue itself.
            if settings.intake.worker != "off":
                worker.start()
                app.extensions["wakeup"] = WakeListener(spool_dir, worker.wake).start()
    _add_auth(app, settings, responder.metrics)
    _add_routes(app, responder, intake)
    _add_health_routes(app, responder)
    _add_error_handlers(app, responder.metrics)
    return app


def _queue_state(store: EventStore, spool: SpoolWriter | None) -> tuple[float, float]:
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


def shutdown(app: Flask, timeout: float = 10.0) -> None:
    """Stop background threads, act on what is due, send what Slack still owes, close the
    journal."""
    ext = app.extensions
    if ext["spool"]:
        ext["spool"].close()  # flushed: what was answered 202 is on disk
    for wake in ("wake_sender", "wakeup"):
        if ext.get(wake):
            ext[wake].close()
    ext["worker"].stop(timeout)
    ext["worker"].drain(timeout)
    ext["responder"].close(timeout)
    if ext["reloader"]:
        ext["reloader"].stop()
    responder = ext["responder"]
    if responder.notifier:
        responder.notifier.close(timeout)
    if hasattr(responder.shared, "close"):
        responder.shared.close()
    ext["store"].close()


def _start_reloader(settings: Settings, responder: Responder,
                    startup: StartupTable) -> TableReloader | None:
    """Watch the table file (not the packaged default, which cannot change)."""
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


def _add_auth(app: Flask, settings: Settings, metrics: Metrics) -> None:
    token = settings.auth.token
    if token:
        auth = TokenAuth(token)

        @app.before_request
        def authenticate() -> tuple[Response, int] | None:
            # Probes and metrics stay open; events in and out need the token.
            if request.endpoint in EVENT_ENDPOINTS or request.endpoint == "event_status":
                refused = auth.reject_unless_allowed()
                if refused:
                    metrics.inc(metrics.rejected, "401")
                return refused
            return None
    if not token and not settings.auth.tls_client_ca_file:
        logger.warning("NO AUTHENTICATION: anyone who can reach this port can send events. "
                       "Set RESPONDER_AUTH_TOKEN(_FILE) or RESPONDER_TLS_CLIENT_CA_FILE.")


def _add_routes(app: Flask, responder: Responder, intake: Intake | None) -> None:
    def receive() -> tuple[Response, int]:
        body, content_type = request.get_data(cache=False), request.content_type or ""
        if intake is not None:
            return jsonify(intake.accept(body, content_type)), 202
        return jsonify(responder.respond(parse_event(body, content_type))), 200

    for endpoint, path in EVENT_ENDPOINTS.items():
        app.add_url_rule(path, endpoint, receive, methods=EVENT_METHODS)

    @app.get("/events/<uuid>", endpoint="event_status")
    def event_status(uuid: str) -> tuple[Response, int]:
        status = responder.store.status(uuid)
        if status is None and intake is not None and intake.known(uuid):
            # Spooled, not yet taken into the queue by the worker.
            status = {"uuid": uuid, "state": "received", "attempts": 0, "error": None,
                      "decisions": []}
        if status is None:
            # Counted like every other refusal: many of them mean a client polls for events
            # this replica never had (another replica's, or ones past retention).
            responder.metrics.inc(responder.metrics.rejected, "404")
            return jsonify({"error": f"no event {clipped(uuid, 128)} (never received, or "
                            "past retention)"}), 404
        return jsonify(status), 200


def _add_health_routes(app: Flask, responder: Responder) -> None:
    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        return jsonify({"status": "ok"}), 200

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(responder.metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        detail = {"table": responder.table.source, "rules": len(responder.table.rules),
                  "armed": responder.armed}
        reloader = app.extensions["reloader"]
        if reloader and reloader.problems:
            # Still ready: the last good table keeps serving. The operator sees why.
            detail["table_reload_errors"] = reloader.problems
            detail["table_refused"] = {"file": str(reloader.path),
                                       "sha256": reloader.refused_sha256}
        if responder.armed:
            # Said, but still ready: events are recorded and acted on once the API answers
            # again, while an unready pod would leave Falcosidekick nowhere to send them
            # (it drops an event it cannot deliver).
            problem = kube.api_reachable(responder.api_client, timeout=2.0)
            detail["kubernetes_api"] = problem or "reachable"
        return jsonify({"status": "ready", **detail}), 200


def _add_error_handlers(app: Flask, metrics: Metrics) -> None:
    @app.errorhandler(EventError)
    def bad_event(exc: EventError) -> tuple[Response, int]:
        metrics.inc(metrics.rejected, "400")
        return jsonify({"error": str(exc)}), 400

    @app.errorhandler(StorageError)
    def no_room(exc: StorageError) -> tuple[Response, int]:
        # Not the sender's fault and not a bug: say what is wrong with our disk.
        logger.error("event not accepted: %s", exc)
        metrics.inc(metrics.rejected, "507")
        return jsonify({"error": str(exc)}), 507

    @app.errorhandler(sqlite3.Error)
    def journal_unusable(exc: sqlite3.Error) -> tuple[Response, int]:
        # The journal's volume full or read-only: the same answer as the spool gives.
        logger.error("journal not usable: %s", exc)
        metrics.inc(metrics.rejected, "507")
        return jsonify({"error": f"cannot use the event journal: {exc}"}), 507

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        message = {413: "request body is larger than RESPONDER_MAX_BODY_BYTES"}.get(
            exc.code, exc.description)
        metrics.inc(metrics.rejected, str(exc.code))
        return jsonify({"error": message}), exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        # A bug, not bad input: log it with the traceback; the body names no internals.
        logger.exception("unexpected error handling %s %s", request.method, request.path)
        return jsonify({"error": "internal error; see the responder's log"}), 500


def log_startup(responder: Responder, where: str, slack: str) -> None:
    logger.info("settings: %s", responder.settings.describe())
    logger.info("action table %s: %d rule(s); cluster: %s",
                responder.table.source, len(responder.table.rules), where)
    logger.info("intake: %s, journal %s; %s", responder.settings.intake.mode,
                responder.store.path if responder.store else "-", slack)
    if not responder.armed:
        logger.warning("DRY-RUN: no action will change the cluster (%s)", _dry_run_cause(responder))


def _dry_run_cause(responder: Responder) -> str:
    if responder.settings.table.force_dry_run:
        return "RESPONDER_DRY_RUN=true"
    if responder.api_client is None:
        return "no Kubernetes cluster configured"
    return "every table rule is dry-run; set dry_run: false in the table to arm it"
