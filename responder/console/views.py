"""The console's pages: overview, timeline, alert, table editor, login."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)

from .. import alerts
from ..errors import EventError
from ..events import parse_event
from ..evidencestore import bundle_listing, recorded_bundles
from ..logs import clipped
from ..service import Responder
from ..settings import Settings
from ..wiring import dry_run_cause
from .auditevents import list_audit_events
from .charts import alert_total, rule_charts
from .controls import add_controls, approval_view, said, undoable
from .guard import Guard, add_headers, safe_next
from .session import login_name
from .tablecheck import DEFAULT_LAST, Check, CheckBusy, Replayer, clamp_last
from .timeline import (
    FILTER_ARGS,
    OUTCOMES,
    PRIORITIES,
    STATES,
    BadFilter,
    load_page,
    read_cursor,
    read_filters,
)

AUDIT_TIMEOUT = 3.0
#: Event text (rule, namespace, pod, node) in lists is cut to this many characters: a forged
#: event's megabyte rule name, fifty to a page refreshed every 5 s, made pages of 50 MB.
CLIP = 200
KNOWN_RULES = 200


def register_console(app: Flask, responder: Responder, settings: Settings) -> None:
    """Serve the console at /ui/ from `app`."""
    guard = Guard(settings)
    console = Blueprint("console", __name__, url_prefix="/ui", template_folder="templates",
                        static_folder="static")
    console.before_request(guard.check)
    console.after_request(add_headers)

    @console.context_processor
    def common() -> dict[str, Any]:
        session = guard.session()
        return {"armed": responder.armed, "dry_run_cause": dry_run_cause(responder)
                if not responder.armed else "", "auth_mode": guard.mode,
                "events_open": guard.events_open,
                "csrf": session.csrf if session else "", "signed_in": session is not None,
                "writable": session is not None, "user": session.name if session else ""}

    _add_overview(console, responder)
    _add_timeline(console, responder)
    _add_alert(console, responder, guard)
    add_controls(console, guard, app.extensions["approvals"], app.extensions["undoer"])
    _add_table(console, responder, app)
    _add_login(console, guard)
    app.register_blueprint(console)
    app.jinja_env.filters.update(utc=utc_time, pretty=pretty_json, clip=clip_text)
    app.jinja_env.globals.update(CLIP=CLIP)


def utc_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def clip_text(value: Any) -> str:
    """Event text for a list: at most CLIP characters, saying how long it was."""
    return clipped(str(value), CLIP) or ""


def pretty_json(value: Any) -> str:
    """For display as text (autoescaped), not for a script."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _bad_filter(exc: BadFilter) -> tuple[Response, int]:
    return jsonify({"error": str(exc)}), 400


def _add_overview(console: Blueprint, responder: Responder) -> None:
    @console.get("/")
    def overview() -> str:
        now = time.time()
        conn = responder.store.connection()
        rows = alerts.hourly_counts(conn, now)
        charts, left_out = rule_charts(rows, now)
        return render_template("overview.html", charts=charts, left_out=left_out,
                               total=alert_total(rows, now),
                               pending=responder.store.pending(), table=responder.table,
                               now=now)


def _add_timeline(console: Blueprint, responder: Responder) -> None:
    console.register_error_handler(BadFilter, _bad_filter)

    def page() -> dict[str, Any]:
        filters = read_filters(request.args)
        before = read_cursor(request.args.get("before"))
        found = load_page(responder.store.connection(), filters, before)
        args = {k: v for k in FILTER_ARGS if (v := request.args.get(k))}
        rows_args = {**args, "before": request.args["before"]} if before else args
        return {"page": found, "filters": filters, "first_page": before is None,
                "inline": responder.settings.intake.mode == "inline",
                "priorities": PRIORITIES, "outcomes": OUTCOMES, "states": STATES,
                "args": args, "rows_url": url_for("console.timeline_rows", **rows_args)}

    def known_rules() -> list[str]:
        """The filter's suggestions (the page only; its refresh shows none): a forged event's
        rule name can be a megabyte, and there can be many."""
        rows = alerts.hourly_counts(responder.store.connection(), time.time())
        return sorted({row[1] for row in rows if len(row[1]) <= CLIP})[:KNOWN_RULES]

    @console.get("/alerts")
    def timeline() -> str:
        return render_template("timeline.html", known_rules=known_rules(), **page())

    @console.get("/alerts/rows")
    def timeline_rows() -> str:
        """The rows alone: the page's refresh fetches them instead of reloading."""
        return render_template("_rows.html", **page())


def _add_alert(console: Blueprint, responder: Responder, guard: Guard) -> None:
    def find(uuid: str) -> dict[str, Any] | None:
        row = responder.store.connection().execute(
            "SELECT id, body, received, state, attempts, error, finished, approval FROM events "
            "WHERE key = ?", (uuid,)).fetchone()
        if row is None:
            return None
        event_id, body, received, state, attempts, error, finished, approval = row
        recorded = responder.store.recorded(event_id)
        decisions = [{**recorded[i], "table_rule": _table_rule(recorded[i])}
                     for i in sorted(recorded)]
        undos = responder.store.undos(event_id)
        alert = {"uuid": uuid, "received": received, "state": state, "attempts": attempts,
                 "error": error, "finished": finished, "decisions": decisions,
                 "event": None, "body": bytes(body).decode("utf-8", "replace"),
                 "approval": approval_view(json.loads(approval) if approval else None, state),
                 "undos": undos,
                 "undoable": undoable(state, decisions, undos, responder.registry)}
        try:
            alert["event"] = parse_event(bytes(body))
        except EventError as exc:
            alert["unreadable"] = str(exc)
        return alert

    @console.get("/alerts/<uuid>")
    def alert_page(uuid: str) -> tuple[str, int]:
        alert = find(uuid)
        if alert is None:
            return render_template("missing.html", uuid=uuid, said=said(guard, uuid)), 404
        return render_template("alert.html", alert=alert, said=said(guard, uuid)), 200

    @console.get("/alerts/<uuid>/audit")
    def alert_audit(uuid: str) -> tuple[str, int]:
        """The audit Events, fetched by the alert page: the page never waits on the API."""
        found = responder.store.lookup(uuid)
        if found is None:
            return render_template("missing.html", uuid=uuid), 404
        listing = list_audit_events(responder.api_client, uuid, found.outcomes,
                                    min(AUDIT_TIMEOUT, responder.settings.kubernetes.timeout))
        return render_template("_audit.html", listing=listing), 200

    @console.get("/alerts/<uuid>/evidence")
    def alert_evidence(uuid: str) -> tuple[str, int]:
        """The evidence bundles, fetched by the alert page: reading manifests back from the
        store (S3, say) never delays the page."""
        found = responder.store.lookup(uuid)
        if found is None:
            return render_template("missing.html", uuid=uuid), 404
        bundles = [bundle_listing(responder.evidence, b)
                   for b in recorded_bundles(found.outcomes)]
        return render_template("_evidence.html", bundles=bundles), 200


def _table_rule(report: dict[str, Any]) -> str:
    return str(report.get("table_rule") or report.get("slot", "").rpartition(":")[0] or "-")


def _add_table(console: Blueprint, responder: Responder, app: Flask) -> None:
    def loaded() -> dict[str, Any]:
        table = responder.table
        reloader = app.extensions.get("reloader")
        return {"table": table, "loaded_at": getattr(responder, "table_loaded_at", None),
                "digest": hashlib.sha256(table.text.encode("utf-8")).hexdigest()
                if table.text else "",
                "reload_problems": list(reloader.problems) if reloader else [],
                "refused_sha256": reloader.refused_sha256 if reloader else None}

    replayer = Replayer(responder.registry, responder.settings.kubernetes.namespace,
                        responder.settings.table.force_dry_run)
    console.register_error_handler(CheckBusy, _busy)

    def run_check(text: str, last: int) -> Check:
        bodies = alerts.recent_bodies(responder.store.connection(), last)
        # Newest first: when the time budget cuts the replay, the oldest are left out.
        return replayer.check(text, responder.table, bodies[::-1])

    @console.get("/table")
    def table_page() -> str:
        return render_template("table.html", **loaded(), text=responder.table.text,
                               last=DEFAULT_LAST, check=None)

    @console.post("/table")
    def table_check_form() -> str:
        text, last = request.form.get("text", ""), clamp_last(request.form.get("last"))
        return render_template("table.html", **loaded(), text=text, last=last,
                               check=run_check(text, last))

    @console.post("/table/check")
    def table_check() -> tuple[Response, int]:
        """For the editor's script: the check as JSON, its view rendered here (escaped)."""
        data = request.get_json(silent=True)
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            return jsonify({"error": "expected a JSON object with 'text' (the table YAML)"}), 400
        check = run_check(data["text"], clamp_last(str(data.get("last") or "")))
        return jsonify({"ok": check.ok, "problems": check.problems,
                        "changes": len(check.changes),
                        "html": render_template("_check.html", check=check)}), 200


def _busy(exc: CheckBusy) -> tuple[Response, int]:
    return jsonify({"error": str(exc)}), 429


def _add_login(console: Blueprint, guard: Guard) -> None:
    def form(error: str = "", status: int = 200) -> tuple[str, int]:
        return render_template("login.html", error=error, form_token=guard.login_form_token(),
                               next=safe_next(request.values.get("next")),
                               token_name=guard.token_name), status

    @console.get("/login")
    def login() -> Any:
        if guard.sessions is None:
            return redirect(url_for("console.overview"))
        return form()

    @console.post("/login")
    def login_post() -> Any:
        if guard.sessions is None:
            return jsonify({"error": "neither RESPONDER_OPERATOR_TOKEN nor RESPONDER_AUTH_TOKEN "
                            "is set: nothing to log in to"}), 404
        if not guard.login_form_valid(request.form.get("csrf")):
            return jsonify({"error": "missing or wrong CSRF token"}), 403
        if guard.login_blocked():
            return jsonify({"error": "too many wrong tokens in the last minute; try again "
                            "later"}), 429
        refused = _login_refusal(guard)
        if refused:
            return form(*refused)
        response = make_response(redirect(safe_next(request.form.get("next"))))
        guard.log_in(response, login_name(request.form.get("name")))
        return response

    @console.post("/logout")
    def logout() -> Response:
        response = make_response(redirect(url_for("console.login")))
        guard.log_out(response)
        return response


def _login_refusal(guard: Guard) -> tuple[str, int] | None:
    """Why the login form's token or name is refused (message, status), or None."""
    assert guard.sessions is not None
    if not guard.sessions.token_matches(request.form.get("token", "")):
        guard.login_failed()
        return "That is not the responder's token.", 401
    try:
        login_name(request.form.get("name"))
    except ValueError as exc:
        return str(exc), 400
    return None
