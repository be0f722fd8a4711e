"""Who may use the console: a login with the bearer token, a session cookie, CSRF tokens on
every POST, and the headers every console answer carries."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from urllib.parse import urlsplit

from flask import Response, jsonify, redirect, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

from ..settings import Settings
from .session import COOKIE, Session, Sessions, csrf_matches

LOGIN_FORM_MAX_AGE = 3600
# Guessing the token through the form: at most this many wrong tries a minute per process.
FAILED_LOGINS_PER_MINUTE = 10
OPEN_ENDPOINTS = {"console.login", "console.login_post", "console.static"}
# Everything is served from here; nothing from elsewhere, no inline script.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Guard:
    """The console's access rules for one set of settings."""

    def __init__(self, settings: Settings):
        # The console acts (approve, reject, undo): it takes the operator token if one is set.
        token = settings.auth.acting_token
        self.sessions = Sessions(token) if token else None
        self.token_name = ("RESPONDER_OPERATOR_TOKEN" if settings.auth.operator_token
                           else "RESPONDER_AUTH_TOKEN")
        self.tls = bool(settings.auth.tls_cert_file)
        self.client_certs = bool(settings.auth.tls_client_ca_file)
        # With only the operator token set, the console has a login but events come in open.
        self.events_open = not settings.auth.token and not self.client_certs
        # Signs the login form's own CSRF token (there is no session yet to hold one).
        key = hashlib.sha256(b"login form|" + (token or "").encode("utf-8")).hexdigest()
        self._login_forms = URLSafeTimedSerializer(key, salt="console-login")
        self._failures: deque[float] = deque()
        self._failures_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Guard(token={'***' if self.sessions else None})"

    @property
    def mode(self) -> str:
        """token: a login; client-certs: TLS vouches for the caller; none: anyone."""
        if self.sessions:
            return "token"
        return "client-certs" if self.client_certs else "none"

    def session(self) -> Session | None:
        return self.sessions.read(request.cookies.get(COOKIE)) if self.sessions else None

    def check(self) -> Response | tuple[Response, int] | None:
        """A before-request check: None lets the request through."""
        if request.endpoint in OPEN_ENDPOINTS:
            return None
        if self.bearer_allowed():
            # A script with the token (a CI job checking a table): a browser never sends
            # this header by itself, so it needs no CSRF token.
            return None
        session = self.session()
        if self.sessions and session is None:
            if request.method == "GET" and not _wants_json():
                return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
            return _refuse(401, "log in to the console first (POST /ui/login)")
        if request.method == "POST":
            return self.check_post(session)
        return None

    def bearer_allowed(self) -> bool:
        scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
        return bool(self.sessions and scheme.lower() == "bearer" and given
                    and self.sessions.token_matches(given))

    def check_post(self, session: Session | None) -> tuple[Response, int] | None:
        if self.sessions is None:
            return _refuse(403, "the console is read-only: neither RESPONDER_OPERATOR_TOKEN nor "
                                "RESPONDER_AUTH_TOKEN is set")
        given = request.headers.get("X-CSRF-Token") or request.form.get("csrf")
        if not csrf_matches(session, given):
            return _refuse(403, "missing or wrong CSRF token")
        return None

    def login_form_token(self) -> str:
        return self._login_forms.dumps("login")

    def login_form_valid(self, given: str | None) -> bool:
        try:
            return self._login_forms.loads(given or "", max_age=LOGIN_FORM_MAX_AGE) == "login"
        except BadSignature:
            return False

    def login_blocked(self, now: float | None = None) -> bool:
        """Too many wrong tokens in the last minute."""
        now = time.monotonic() if now is None else now
        with self._failures_lock:
            while self._failures and self._failures[0] < now - 60:
                self._failures.popleft()
            return len(self._failures) >= FAILED_LOGINS_PER_MINUTE

    def login_failed(self) -> None:
        with self._failures_lock:
            self._failures.append(time.monotonic())

    def log_in(self, response: Response, name: str = "") -> None:
        """Set a new session's cookie (of the person calling themselves `name`) on
        `response`."""
        assert self.sessions is not None
        _, value = self.sessions.issue(name)
        response.set_cookie(COOKIE, value, max_age=self.sessions.max_age, path="/ui/",
                            httponly=True, samesite="Strict", secure=self._secure())

    def log_out(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/ui/", httponly=True, samesite="Strict",
                               secure=self._secure())

    def _secure(self) -> bool:
        return self.tls or request.is_secure


def safe_next(target: str | None) -> str:
    """Where to go after logging in: only a path of the console (no open redirect)."""
    if not target:
        return "/ui/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/") or "\\" in target:
        return "/ui/"
    return target


def add_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _wants_json() -> bool:
    return request.headers.get("X-Requested-With") == "fetch" or \
        request.accept_mimetypes.best == "application/json"


def _refuse(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status
