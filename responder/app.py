"""The Flask app factory: the webhook Falcosidekick calls, and the health endpoints."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from typing import Any

from flask import Flask, Response, jsonify, request
from kubernetes.client import ApiClient
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException

from . import eventread, kube
from .actions import Registry
from .approvals import ApprovalError, Approvals, approver_name
from .auth import TokenAuth
from .console import register_console
from .errors import EventError, StorageError, UndoRefused
from .events import parse_event
from .intake import Intake
from .interactions import InteractionError, SlackInteractions
from .logs import clipped
from .metrics import Metrics
from .notify import SlackConfig
from .relay import ReadServer, Relay
from .service import Responder
from .settings import Settings
from .spool import SpoolWriter
from .table import Table
from .undo import Undoer
from .wakeup import WakeListener, WakeSender, Wakeups
from .wiring import (
    UNSET,
    Components,
    build_components,
    start_reloader,
    stop_components,
    watch_queue,
)

logger = logging.getLogger(__name__)
EVENT_METHODS = ["POST", "PUT"]  # Falcosidekick's webhook.method may be PUT
EVENT_ENDPOINTS = {"receive_root": "/", "receive_events": "/events"}
#: About one event: need the token as the event endpoints do (not /slack/interactions:
#: Slack cannot send the token; the app's signing secret authenticates it instead).
STATUS_ENDPOINTS = ("event_status", "event_evidence")
#: Acting on one event: the operator token when one is set (RESPONDER_OPERATOR_TOKEN).
ACTING_ENDPOINTS = ("event_undo", "event_approve", "event_reject")


def create_app(settings: Settings | None = None, *, table: Table | None = None,
               registry: Registry | None = None, api_client: ApiClient | None = UNSET,
               slack: SlackConfig | None = UNSET, start_worker: bool = True) -> Flask:
    """Build the app. Nothing happens at import; gunicorn runs `responder.app:create_app()`.

    Tests pass their own parts; `start_worker=False` leaves the queue to `worker.run_pending`.
    """
    settings = settings or Settings.from_env()
    parts = build_components(settings, table=table, registry=registry, api_client=api_client,
                             slack=slack)
    responder, worker, store = parts.responder, parts.worker, parts.store
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.intake.max_body_bytes
    spool = SpoolWriter(parts.spool_dir) if settings.intake.mode == "queue" else None
    app.extensions.update(components=parts, responder=responder, worker=worker, store=store,
                          spool=spool, reloader=start_reloader(parts), undoer=parts.undoer)
    watch_queue(parts, spool)
    intake = None
    if spool is not None:
        # Our own worker (if any) and the queue worker process of `responder serve`.
        sender = app.extensions["wake_sender"] = WakeSender(parts.spool_dir)
        intake = Intake(responder, store, spool, parts.shared, Wakeups(worker.wake, sender),
                        settings.storage.retention_seconds)
        if start_worker:
            spool.start_sync(settings.storage.sync_seconds)
            # "process" is `responder serve`'s to honour (it runs its server with "off");
            # served any other way, this process runs the queue itself.
            if settings.intake.worker != "off":
                worker.start()
                app.extensions["wakeup"] = WakeListener(parts.spool_dir, worker.wake).start()
    _add_auth(app, settings, responder.metrics)
    if parts.relay is not None:
        # Reads of this replica's events reaching another replica come here: served by
        # the processes that serve HTTP (the queue worker process may be restarting).
        app.extensions["read_server"] = ReadServer(parts.relay, lambda uuid, what: (
            eventread.read_here(responder, uuid, what))).start()
    # Reads waiting on another replica share the undos' bound: all request threads but one.
    gate = parts.undoer.gate
    _add_routes(app, responder, intake, parts.relay, gate)
    _add_evidence_route(app, responder, parts.relay, gate)
    _add_undo_route(app, parts.undoer, intake)
    wakeups = Wakeups(worker.wake, *([app.extensions["wake_sender"]] if spool else []))
    approvals = app.extensions["approvals"] = Approvals(store, wakeups.set,
                                                        counted=responder.count_verdict,
                                                        relay=parts.relay)
    interactions = app.extensions["interactions"] = interactions_for(parts, approvals)
    _add_approval_routes(app, responder, approvals, intake, interactions)
    if responder.api_client is not None:
        # Started by the first /readyz (in the process that serves it: gunicorn forks).
        app.extensions["api_probe"] = kube.ApiProbe(responder.api_client)
    _add_health_routes(app, responder)
    register_console(app, responder, settings)
    _add_error_handlers(app, responder.metrics)
    return app


def shutdown(app: Flask, timeout: float = 10.0) -> None:
    """Stop taking events in and background threads, then stop the components
    (`wiring.stop_components`)."""
    ext = app.extensions
    if ext["spool"]:
        ext["spool"].close()  # flushed: what was answered 202 is on disk
    if ext.get("api_probe"):
        ext["api_probe"].stop()
    if ext.get("read_server"):
        ext["read_server"].stop()
    for wake in ("wake_sender", "wakeup"):
        if ext.get(wake):
            ext[wake].close()
    stop_components(ext["components"], ext["reloader"], timeout)


def _add_auth(app: Flask, settings: Settings, metrics: Metrics) -> None:
    events = TokenAuth(settings.auth.token) if settings.auth.token else None
    operators = TokenAuth(settings.auth.operator_token) if settings.auth.operator_token \
        else None

    @app.before_request
    def authenticate() -> tuple[Response, int] | None:
        # Probes and metrics stay open; events in and out need a token, acting on one the
        # operator token when there is one.
        endpoint = request.endpoint
        if endpoint in ACTING_ENDPOINTS:
            refused = _token_refusal([operators or events], wrong=events if operators else None,
                                     wrong_error=EVENTS_TOKEN_ACTS)
        elif endpoint in STATUS_ENDPOINTS:
            refused = _token_refusal([events, operators])
        elif endpoint in EVENT_ENDPOINTS:
            refused = _token_refusal([events], wrong=operators, wrong_error=OPERATOR_SENDS)
        else:
            refused = None
        if refused:
            metrics.inc(metrics.rejected, str(refused[1]))
        return refused

    _log_auth(settings)


EVENTS_TOKEN_ACTS = ("this is the events token; approve, reject and undo take "
                     "RESPONDER_OPERATOR_TOKEN")
OPERATOR_SENDS = "this is the operator token; events take RESPONDER_AUTH_TOKEN"


def _token_refusal(allowed: list[TokenAuth | None], wrong: TokenAuth | None = None,
                   wrong_error: str = "") -> tuple[Response, int] | None:
    """None when none of `allowed` is configured or the request carries one of them; 403
    with `wrong_error` for the `wrong` one of our two tokens; else 401."""
    allowed = [auth for auth in allowed if auth]
    header = request.headers.get("Authorization")
    if not allowed or any(auth.allows(header) for auth in allowed):
        return None
    if wrong is not None and wrong.allows(header):
        return jsonify({"error": wrong_error}), 403
    return allowed[0].reject_unless_allowed()


def _log_auth(settings: Settings) -> None:
    auth = settings.auth
    if not auth.token and not auth.tls_client_ca_file:
        acting = ("" if auth.operator_token else ", approve or reject waiting actions and "
                  "undo responses (free an isolated pod)")
        logger.warning("NO AUTHENTICATION: anyone who can reach this port can send events%s. "
                       "Set RESPONDER_AUTH_TOKEN(_FILE) or RESPONDER_TLS_CLIENT_CA_FILE%s.",
                       acting, "" if auth.operator_token else
                       ", and RESPONDER_OPERATOR_TOKEN(_FILE) for approve, reject and undo")
    elif not auth.operator_token:
        logger.warning("approve, reject, undo and the console login take the events token "
                       "(or a client certificate): whoever holds Falcosidekick's can free an "
                       "isolated pod. Set RESPONDER_OPERATOR_TOKEN(_FILE) to keep them apart.")


def _add_routes(app: Flask, responder: Responder, intake: Intake | None,
                relay: Relay | None, gate: threading.Semaphore) -> None:
    def receive() -> tuple[Response, int]:
        body, content_type = request.get_data(cache=False), request.content_type or ""
        if intake is not None:
            return jsonify(intake.accept(body, content_type)), 202
        return jsonify(responder.respond(parse_event(body, content_type))), 200

    for endpoint, path in EVENT_ENDPOINTS.items():
        app.add_url_rule(path, endpoint, receive, methods=EVENT_METHODS)

    @app.get("/events/<uuid>", endpoint="event_status")
    def event_status(uuid: str) -> tuple[Response, int]:
        status = eventread.event_status(responder, uuid)
        if status is None and intake is not None and intake.known(uuid):
            # Spooled, not yet taken into the queue by the worker.
            status = {"uuid": uuid, "state": "received", "attempts": 0, "error": None,
                      "decisions": []}
        if status is not None:
            return jsonify(status), 200
        elsewhere = eventread.read_elsewhere(relay, uuid, eventread.STATUS, gate)
        if elsewhere is not None and elsewhere[0] != 404:
            if elsewhere[0] >= 400:  # 429 or 504: counted as every refusal is
                responder.metrics.inc(responder.metrics.rejected, str(elsewhere[0]))
            return jsonify(elsewhere[1]), elsewhere[0]
        # Counted like every other refusal: many of them mean a client polls for events
        # no replica has (past retention), or this one never had (Redis down).
        responder.metrics.inc(responder.metrics.rejected, "404")
        return jsonify({"error": f"no event {clipped(uuid, 128)} (never received, or "
                        "past retention)"}), 404


def _add_evidence_route(app: Flask, responder: Responder, relay: Relay | None,
                        gate: threading.Semaphore) -> None:
    @app.get("/events/<uuid>/evidence", endpoint="event_evidence")
    def event_evidence(uuid: str) -> tuple[Response, int]:
        recorded = responder.store.status(uuid)
        elsewhere = None if recorded is not None else eventread.read_elsewhere(
            relay, uuid, eventread.EVIDENCE, gate)
        status, body = elsewhere or eventread.event_evidence(responder, uuid, recorded)
        if status >= 400:
            responder.metrics.inc(responder.metrics.rejected, str(status))
        return jsonify(body), status


def interactions_for(parts: Components, approvals: Approvals) -> SlackInteractions | None:
    """The Slack interactions handler, when a signing secret is set (else the path is 404)."""
    slack, notifier = parts.slack, parts.responder.notifier
    if slack is None or not slack.interactive or notifier is None:
        return None
    return SlackInteractions(slack.signing_secret, slack.approvers, approvals, notifier.tell,
                             undo=parts.undoer.undo, undo_limit=parts.undoer.max_running)


def _add_approval_routes(app: Flask, responder: Responder, approvals: Approvals,
                         intake: Intake | None, interactions: SlackInteractions | None) -> None:
    metrics = responder.metrics

    def decide(uuid: str, verb: str) -> tuple[Response, int]:
        by = approver_name(_json_body())
        status, body = approvals.decide(uuid, verb, by, "http")
        if status == 404 and intake is not None and intake.known(uuid):
            status, body = 409, {"error": f"event {clipped(uuid, 128)} is not yet in the "
                                 "queue; try again in a moment", "uuid": uuid,
                                 "state": "received"}
        if status != 200:
            metrics.inc(metrics.rejected, str(status))
        return jsonify(body), status

    app.add_url_rule("/events/<uuid>/approve", "event_approve",
                     lambda uuid: decide(uuid, "approve"), methods=["POST"])
    app.add_url_rule("/events/<uuid>/reject", "event_reject",
                     lambda uuid: decide(uuid, "reject"), methods=["POST"])

    @app.post("/slack/interactions", endpoint="slack_interactions")
    def slack_interactions() -> tuple[Response, int]:
        if interactions is None:
            metrics.inc(metrics.rejected, "404")
            return jsonify({"error": "Slack interactions are off: RESPONDER_SLACK_TOKEN and "
                            "RESPONDER_SLACK_SIGNING_SECRET turn them on"}), 404
        status, body = interactions.handle(request.get_data(cache=False), request.headers)
        if status != 200:
            metrics.inc(metrics.rejected, str(status))
        return jsonify(body), status


def _add_undo_route(app: Flask, undoer: Undoer, intake: Intake | None) -> None:
    @app.post("/events/<uuid>/undo", endpoint="event_undo")
    def event_undo(uuid: str) -> tuple[Response, int]:
        by = _undo_by()
        try:
            return jsonify(undoer.undo(uuid, by)), 200
        except UndoRefused as exc:
            if exc.status == 404 and intake is not None and intake.known(uuid):
                # Spooled, not yet taken into the journal by the worker.
                raise UndoRefused(409, f"event {clipped(uuid, 128)} is still received: undo "
                                  "it once its actions have run") from None
            raise


def _undo_by() -> str | None:
    """The optional JSON body's `by`: who asks (400 for a body that is not such an object)."""
    body = request.get_data(cache=False)
    if not body.strip():
        return None
    data = _json_body(body)
    if data is None:
        raise UndoRefused(400, "body must be empty or a JSON object like {\"by\": \"name\"}")
    if not isinstance(data, dict) or set(data) - {"by"}:
        raise UndoRefused(400, "body must be empty or a JSON object with only \"by\"")
    return data.get("by")


def _json_body(body: bytes | None = None) -> Any:
    """The request's JSON body; None when it is not JSON (not UTF-8, malformed, or nested
    too deep for the parser, which is a RecursionError, not a ValueError)."""
    try:
        return json.loads(request.get_data(cache=False) if body is None else body)
    except (ValueError, RecursionError):
        return None


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
            # (it drops an event it cannot deliver). The answer is the background probe's:
            # nothing here waits on the API.
            detail.update(app.extensions["api_probe"].start().state())
        return jsonify({"status": "ready", **detail}), 200


def _add_error_handlers(app: Flask, metrics: Metrics) -> None:
    @app.errorhandler(EventError)
    def bad_event(exc: EventError) -> tuple[Response, int]:
        metrics.inc(metrics.rejected, "400")
        return jsonify({"error": str(exc)}), 400

    @app.errorhandler(ApprovalError)
    @app.errorhandler(InteractionError)
    def bad_request(exc: ValueError) -> tuple[Response, int]:
        metrics.inc(metrics.rejected, "400")
        return jsonify({"error": str(exc)}), 400

    @app.errorhandler(UndoRefused)
    def undo_refused(exc: UndoRefused) -> tuple[Response, int]:
        metrics.inc(metrics.rejected, str(exc.status))
        return jsonify({"error": str(exc)}), exc.status

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
