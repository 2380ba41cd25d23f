"""One client's walk through the protocol: init, ping, auth refresh, limits, close.

The session runs in the greenlet that accepted the WebSocket and is the only
code that closes it, so a close requested elsewhere (slow client, shutdown)
is carried out here, after waking the session with a sentinel frame.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from simple_websocket import ConnectionClosed

from webapp.auth import AuthError, Identity, VerifierUnavailable
from webapp.brokers.base import BrokerUnavailable
from webapp.config import normalise_email
from webapp.connection import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_RESTART,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TRY_AGAIN,
    WAKE,
    WebSocketConnection,
)
from webapp.events import utc_timestamp
from webapp.hub import TooManyConnections
from webapp.protocol import (
    ClientMessage,
    ProtocolError,
    authenticated,
    connected,
    encode,
    error,
    optional_string,
    parse_client_frame,
    pong,
)
from webapp.realtime import Realtime

logger = logging.getLogger(__name__)


class _Close(Exception):
    """End the session: send ``message`` as an error (if any), then close with ``code``."""

    def __init__(self, code: int, message: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Session:
    """Drive one :class:`WebSocketConnection` until it closes."""

    def __init__(self, node: Realtime, connection: WebSocketConnection) -> None:
        self.node = node
        self.settings = node.settings
        self.connection = connection
        self.init_deadline = time.monotonic() + self.settings.init_timeout

    def run(self) -> None:
        """Serve the connection until the peer leaves or a rule closes it."""
        connection = self.connection
        logger.info("connection %s opened from %s", connection.id, connection.remote or "?")
        reason = "peer closed"
        self.node.opened(connection)
        try:
            if self.node.shutting_down:
                raise _Close(CLOSE_RESTART, None)
            while True:
                if connection.close_requested is not None:
                    code, text = connection.close_requested
                    reason = f"closed {code}: {text}"
                    connection.close(code, text)
                    return
                frame = connection.receive(self._receive_timeout())
                if frame is WAKE:
                    continue
                if frame is None:
                    self._check_deadlines()
                    continue
                self._handle_frame(frame)
        except _Close as close:
            reason = f"closed {close.code}: {close.message or ''}"
            if close.message:
                connection.send(encode(error(close.message)))
            connection.close(close.code, close.message or "")
        except ConnectionClosed:
            pass
        except Exception:
            # A bug must not leave the socket half-served, nor let flask-sock
            # answer an HTTP 500 down an upgraded connection: close it with 1011.
            logger.exception("connection %s failed", connection.id)
            reason = "closed 1011: internal error"
            connection.close(CLOSE_INTERNAL, "Internal error")
        finally:
            self.node.detach(connection)
            connection.linger()
            logger.info(
                "connection %s ended user=%s (%s)", connection.id, connection.user_id, reason
            )

    # -- timing ------------------------------------------------------------------

    def _receive_timeout(self) -> float | None:
        waits = []
        if self.connection.user_id is None:
            waits.append(self.init_deadline - time.monotonic())
        if self.connection.token_expires_at is not None:
            waits.append(self.connection.token_expires_at - time.time())
        return max(0.0, min(waits)) + 0.01 if waits else None

    def _check_deadlines(self) -> None:
        if self.connection.user_id is None and time.monotonic() >= self.init_deadline:
            raise _Close(
                CLOSE_POLICY,
                f"Init timeout: no valid init within {self.settings.init_timeout:g}s",
            )
        expires = self.connection.token_expires_at
        if expires is not None and time.time() >= expires:
            raise _Close(CLOSE_TOKEN_EXPIRED, "Token expired: refresh it with an auth message")

    # -- frames --------------------------------------------------------------------

    def _handle_frame(self, frame: Any) -> None:
        try:
            message = parse_client_frame(frame)
            if message.type == "ping":
                self.connection.send(encode(pong()))
            elif message.type == "init":
                self._handle_init(message)
            elif message.type == "auth":
                self._handle_auth(message)
        except ProtocolError as problem:
            self.connection.send(encode(error(str(problem))))
        self._check_deadlines()

    def _verify(self, token: str) -> Identity:
        try:
            return self.node.verifier.verify(token)
        except AuthError as failure:
            raise _Close(CLOSE_POLICY, str(failure)) from None
        except VerifierUnavailable as outage:
            # 1011: the client should retry with backoff, keeping its token.
            raise _Close(CLOSE_INTERNAL, str(outage)) from None

    def _handle_init(self, message: ClientMessage) -> None:
        payload = message.payload
        claimed = optional_string(payload, "userId")
        token = optional_string(payload, "token")
        last_event_id = payload.get("lastEventId")
        if isinstance(last_event_id, int) and not isinstance(last_event_id, bool):
            last_event_id = str(last_event_id)
        elif last_event_id is not None and not isinstance(last_event_id, str):
            raise ProtocolError("Invalid lastEventId: expected the string id of an event")
        identity: Identity | None = None
        if token is not None:
            identity = self._verify(token)
            if claimed is not None and normalise_email(claimed) != identity.email:
                raise _Close(
                    CLOSE_POLICY, "Authentication failed: token email does not match userId"
                )
            user_id = identity.email
        elif self.settings.require_token:
            raise _Close(CLOSE_POLICY, "Authentication failed: init requires a Firebase ID token")
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
            # A repeated init changes nothing (SPEC §3): same registration, no
            # replay, same token deadline (auth refreshes it); only connected again.
            again: dict[str, Any] = {}
            if self.connection.token_expires_at is not None:
                again["expiresAt"] = utc_timestamp(self.connection.token_expires_at)
            self.connection.send(encode(connected(user_id, **again)))
            return
        try:
            self.node.attach(self.connection, user_id, last_event_id or None, **extra)
        except TooManyConnections as refusal:
            raise _Close(CLOSE_POLICY, str(refusal)) from None
        except BrokerUnavailable:
            # Not the client's fault: 1013 tells it to retry (with backoff) and resume.
            raise _Close(
                CLOSE_TRY_AGAIN, "Service unavailable: history cannot be read, retry shortly"
            ) from None
        if identity is not None:
            self.connection.token_expires_at = identity.expires_at

    def _handle_auth(self, message: ClientMessage) -> None:
        if self.connection.user_id is None:
            raise ProtocolError("Not initialised: send init first")
        token = optional_string(message.payload, "token")
        if token is None:
            raise _Close(CLOSE_POLICY, "Authentication failed: auth requires a token")
        identity = self._verify(token)
        if identity.email != self.connection.user_id:
            raise _Close(CLOSE_POLICY, "Authentication failed: token is for another user")
        self.connection.token_expires_at = identity.expires_at
        self.connection.send(
            encode(authenticated(identity.email, utc_timestamp(identity.expires_at)))
        )
