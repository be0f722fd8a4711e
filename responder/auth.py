"""Who may send events: a shared bearer token checked before the body is even read."""

from __future__ import annotations

import hmac

from flask import Response, jsonify, request


class TokenAuth:
    """Checks `Authorization: Bearer <token>` in constant time. The token is never logged."""

    def __init__(self, token: str):
        self._token = token.encode("utf-8")

    def __repr__(self) -> str:
        return "TokenAuth(token=***)"

    def allows(self, header: str | None) -> bool:
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8"), self._token)

    def reject_unless_allowed(self) -> tuple[Response, int] | None:
        """A Flask before-request check: None lets the request through."""
        if self.allows(request.headers.get("Authorization")):
            return None
        reply = jsonify({"error": "missing or wrong bearer token in the Authorization header"})
        reply.headers["WWW-Authenticate"] = 'Bearer realm="falco-responder"'
        return reply, 401
