"""The console's login session: a signed cookie holding a CSRF token, never the token.

The signing key is derived from the configured bearer token, so every gunicorn process and
every replica accepts a session another one issued, and rotating the token ends them all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "responder_console"
MAX_AGE_SECONDS = 12 * 3600
_KEY_CONTEXT = b"falco-responder console session v1"


@dataclass(frozen=True)
class Session:
    """A logged-in browser; `csrf` must come back with every POST it makes."""

    csrf: str


class Sessions:
    """Issues and checks session cookies for one token. Its repr names no secret."""

    def __init__(self, token: str, max_age: int = MAX_AGE_SECONDS):
        self._token = token.encode("utf-8")
        key = hmac.new(self._token, _KEY_CONTEXT, hashlib.sha256).hexdigest()
        self._serializer = URLSafeTimedSerializer(key, salt="console-session")
        self.max_age = max_age

    def __repr__(self) -> str:
        return "Sessions(token=***)"

    def token_matches(self, given: str) -> bool:
        """Constant-time comparison with the configured token."""
        return hmac.compare_digest(given.strip().encode("utf-8"), self._token)

    def issue(self) -> tuple[Session, str]:
        """A new session and its cookie value."""
        session = Session(secrets.token_urlsafe(32))
        return session, self._serializer.dumps({"csrf": session.csrf})

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, or None when it is missing, forged or expired."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # SignatureExpired is one too
            return None
        csrf = data.get("csrf") if isinstance(data, dict) else None
        return Session(csrf) if isinstance(csrf, str) and csrf else None


def csrf_matches(session: Session | None, given: str | None) -> bool:
    """Whether a POST carries its session's CSRF token."""
    if session is None or not given:
        return False
    return hmac.compare_digest(session.csrf.encode("utf-8"), given.encode("utf-8"))
