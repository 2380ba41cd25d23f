"""The rules a client meets, whatever transport carries its frames.

Identify (token check, userId match, legacy mode, lastEventId, the per-user
limit), refresh a token, and the two deadlines (init timeout, token expiry)
live here once; the raw WebSocket session (``webapp.session``) and the
Socket.IO layer (``webapp.transports.socketio``) only turn their own framing
into these calls and render what comes back their own way.

Problems surface as values a transport can render:

- :class:`~webapp.protocol.ProtocolError`: answer an error, keep the client;
- :class:`CloseClient`: answer an error (if it has a message), then end the
  client with its close code (raw: a close frame with that code; Socket.IO:
  ``connect_error`` with ``data.code``, or an ``error`` event and a
  disconnect).
"""

from __future__ import annotations

import time
from typing import Any

from webapp.auth import AuthError, Identity, VerifierUnavailable
from webapp.brokers.base import BrokerUnavailable
from webapp.config import normalise_email
from webapp.connection import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TRY_AGAIN,
    Connection,
)
from webapp.events import utc_timestamp
from webapp.hub import TooManyConnections
from webapp.protocol import ProtocolError, authenticated, connected, encode, optional_string
from webapp.realtime import Realtime

NO_TOKEN = "Authentication failed: init requires a Firebase ID token"
#: Added in development mode, where anyone can mint a token (close reasons: <= 123 bytes).
DEV_TOKEN_HINT = " (development mode: get one from POST /dev/token)"


class CloseClient(Exception):
    """A rule ends the client: tell it ``message`` (if any), then close with ``code``."""

    def __init__(self, code: int, message: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ClientRules:
    """Apply the protocol's rules to one :class:`Connection`."""

    def __init__(self, node: Realtime, connection: Connection) -> None:
        self.node = node
        self.settings = node.settings
        self.connection = connection
        self.init_deadline = time.monotonic() + self.settings.init_timeout

    # -- deadlines -------------------------------------------------------------

    def seconds_to_deadline(self) -> float | None:
        """Return how long until the next deadline (init or token expiry), None if none."""
        waits = []
        if self.connection.user_id is None:
            waits.append(self.init_deadline - time.monotonic())
        if self.connection.token_expires_at is not None:
            waits.append(self.connection.token_expires_at - time.time())
        return max(0.0, min(waits)) if waits else None

    def check_deadlines(self) -> None:
        """Raise :class:`CloseClient` if the init deadline or the token's expiry has passed."""
        if self.connection.user_id is None and time.monotonic() >= self.init_deadline:
            raise CloseClient(
                CLOSE_POLICY,
                f"Init timeout: no valid init within {self.settings.init_timeout:g}s",
            )
        expires = self.connection.token_expires_at
        if expires is not None and time.time() >= expires:
            raise CloseClient(CLOSE_TOKEN_EXPIRED, "Token expired: refresh it with an auth message")

    # -- identify and refresh ------------------------------------------------------

    def verify(self, token: str) -> Identity:
        """Verify ``token``; a bad one is a 1008 close, an unreachable verifier a 1011."""
        try:
            return self.node.verifier.verify(token)
        except AuthError as failure:
            raise CloseClient(CLOSE_POLICY, str(failure)) from None
        except VerifierUnavailable as outage:
            # 1011: the client should retry with backoff, keeping its token.
            raise CloseClient(CLOSE_INTERNAL, str(outage)) from None

    def identify(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Apply an init ``payload``: send ``connected`` and history, return ``connected``.

        Raises :class:`ProtocolError` (answer, keep the client) or
        :class:`CloseClient` (answer, then close).
        """
        claimed = optional_string(payload, "userId")
        token = optional_string(payload, "token")
        last_event_id = payload.get("lastEventId")
        if isinstance(last_event_id, int) and not isinstance(last_event_id, bool):
            last_event_id = str(last_event_id)
        elif last_event_id is not None and not isinstance(last_event_id, str):
            raise ProtocolError("Invalid lastEventId: expected the string id of an event")
        identity: Identity | None = None
        if token is not None:
            identity = self.verify(token)
            if claimed is not None and normalise_email(claimed) != identity.email:
                raise CloseClient(
                    CLOSE_POLICY, "Authentication failed: token email does not match userId"
                )
            user_id = identity.email
        elif self.settings.require_token:
            hint = DEV_TOKEN_HINT if self.settings.development else ""
            raise CloseClient(CLOSE_POLICY, NO_TOKEN + hint)
        elif claimed is None or not normalise_email(claimed):
            raise ProtocolError("Missing userId in init payload")
        else:
            user_id = normalise_email(claimed)

        extra: dict[str, Any] = {}
        if identity is not None:
            extra["expiresAt"] = utc_timestamp(identity.expires_at)
        current = self.connection.user_id
        if current is not None:
            if current != user_id:
                raise ProtocolError(f"Already initialised as another user ({current})")
            # A repeated init changes nothing (docs/protocol.md): same registration, no
            # replay, same token deadline (auth refreshes it); only connected again.
            again: dict[str, Any] = {}
            if self.connection.token_expires_at is not None:
                again["expiresAt"] = utc_timestamp(self.connection.token_expires_at)
            message = connected(user_id, **again)
            self.connection.send(encode(message))
            return message
        try:
            message = self.node.attach(self.connection, user_id, last_event_id or None, **extra)
        except TooManyConnections as refusal:
            raise CloseClient(CLOSE_POLICY, str(refusal)) from None
        except BrokerUnavailable:
            # Not the client's fault: 1013 tells it to retry (with backoff) and resume.
            raise CloseClient(
                CLOSE_TRY_AGAIN, "Service unavailable: history cannot be read, retry shortly"
            ) from None
        if identity is not None:
            self.connection.token_expires_at = identity.expires_at
        return message

    def refresh(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Apply an auth ``payload`` (token refresh); return the ``authenticated`` answer.

        The answer is not sent: each transport sends it its own way.
        """
        if self.connection.user_id is None:
            raise ProtocolError("Not initialised: send init first")
        token = optional_string(payload, "token")
        if token is None:
            raise CloseClient(CLOSE_POLICY, "Authentication failed: auth requires a token")
        identity = self.verify(token)
        if identity.email != self.connection.user_id:
            raise CloseClient(CLOSE_POLICY, "Authentication failed: token is for another user")
        self.connection.token_expires_at = identity.expires_at
        return authenticated(identity.email, utc_timestamp(identity.expires_at))
