"""Request guards for REST views: Firebase bearer tokens and the server API key."""

from __future__ import annotations

import hmac

from flask import request
from flask_smorest import abort

from webapp.auth import AuthError, Identity, VerifierUnavailable
from webapp.realtime import realtime


def current_identity() -> Identity:
    """Return the verified identity of ``Authorization: Bearer <token>``, else abort 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        abort(401, message="Missing Authorization: Bearer <Firebase ID token>")
    try:
        return realtime().verifier.verify(token.strip())
    except AuthError as failure:
        abort(401, message=str(failure))
    except VerifierUnavailable as outage:
        abort(503, message=str(outage))


def is_admin(identity: Identity) -> bool:
    """Return True for users listed in ADMIN_EMAILS."""
    return identity.email in realtime().settings.admin_emails


def secret_matches(presented: str | None, expected: str) -> bool:
    """Compare a presented secret with the configured one in constant time."""
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def require_api_key() -> None:
    """Abort unless ``X-API-Key`` equals EVENTS_API_KEY (404 when the endpoint is disabled)."""
    expected = realtime().settings.events_api_key
    if expected is None:
        abort(404, message="The publish endpoint is disabled: set EVENTS_API_KEY to enable it")
    if not secret_matches(request.headers.get("X-API-Key"), expected):
        abort(401, message="Missing or wrong X-API-Key")
