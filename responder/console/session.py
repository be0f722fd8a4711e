"""The console's login session: a signed cookie holding a CSRF token, never the token.

The signing key is derived from the configured bearer token, so every gunicorn process and
every replica accepts a session another one issued, and rotating the token ends them all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "responder_console"
MAX_AGE_SECONDS = 12 * 3600
#: How long the alert page shows what a control did after the redirect (a reload within).
SAID_MAX_AGE = 300
#: The optional name given at login: short, printable (it goes into the journal, logs,
#: audit Events and Slack).
NAME_LIMIT = 64
_KEY_CONTEXT = b"falco-responder console session v1"


@dataclass(frozen=True)
class Session:
    """A logged-in browser; `csrf` must come back with every POST it makes. `name` is who
    the person said they are at login ("" when they did not say): a label for the journal,
    not an identity (everyone logs in with the same token)."""

    csrf: str
    name: str = ""

    @property
    def by(self) -> str:
        """Who acts, as undos and audit records name them: `alice (console)`, `console`."""
        return f"{self.name} (console)" if self.name else "console"


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

    def issue(self, name: str = "") -> tuple[Session, str]:
        """A new session (of the person calling themselves `name`) and its cookie value."""
        session = Session(secrets.token_urlsafe(32), name)
        return session, self._serializer.dumps({"csrf": session.csrf, "name": name})

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, or None when it is missing, forged or expired."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # SignatureExpired is one too
            return None
        if not isinstance(data, dict):
            return None
        csrf, name = data.get("csrf"), data.get("name") or ""
        if not isinstance(csrf, str) or not csrf or not isinstance(name, str):
            return None
        return Session(csrf, name)

    def seal(self, data: dict[str, Any]) -> str:
        """`data` signed for a redirect's query (what a control did), so a link cannot make
        the console claim something it did not do."""
        return self._serializer.dumps(data, salt="console-said")

    def unseal(self, text: str | None, max_age: int = SAID_MAX_AGE) -> dict[str, Any] | None:
        if not text:
            return None
        try:
            data = self._serializer.loads(text, salt="console-said", max_age=max_age)
        except BadSignature:
            return None
        return data if isinstance(data, dict) else None


def csrf_matches(session: Session | None, given: str | None) -> bool:
    """Whether a POST carries its session's CSRF token."""
    if session is None or not given:
        return False
    return hmac.compare_digest(session.csrf.encode("utf-8"), given.encode("utf-8"))


def login_name(given: str | None) -> str:
    """The name typed at login, stripped ("" for none); ValueError when it is not a short
    printable text."""
    name = (given or "").strip()
    if len(name) > NAME_LIMIT or not name.isprintable():
        raise ValueError(f"Your name: at most {NAME_LIMIT} printable characters.")
    return name
