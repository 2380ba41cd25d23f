"""The raw WebSocket session: one client's frames through init, ping, auth refresh, close.

The rules themselves (identify, refresh, deadlines) are transport-neutral and
live in ``webapp.client_rules``; this module turns JSON frames into those
calls and renders their answers as frames and close codes.

The session runs in the greenlet that accepted the WebSocket and is the only
code that closes it, so a close requested elsewhere (slow client, shutdown)
is carried out here, after waking the session with a sentinel frame.
"""

from __future__ import annotations

import logging
from typing import Any

from simple_websocket import ConnectionClosed

from webapp.client_rules import ClientRules, CloseClient
from webapp.connection import CLOSE_INTERNAL, CLOSE_RESTART, WAKE, WebSocketConnection
from webapp.protocol import ProtocolError, encode, error, parse_client_frame, pong
from webapp.realtime import Realtime

logger = logging.getLogger(__name__)


class Session:
    """Drive one :class:`WebSocketConnection` until it closes."""

    def __init__(self, node: Realtime, connection: WebSocketConnection) -> None:
        self.node = node
        self.settings = node.settings
        self.connection = connection
        self.rules = ClientRules(node, connection)

    def run(self) -> None:
        """Serve the connection until the peer leaves or a rule closes it."""
        connection = self.connection
        logger.info("connection %s opened from %s", connection.id, connection.remote or "?")
        reason = "peer closed"
        self.node.opened(connection)
        try:
            if self.node.shutting_down:
                raise CloseClient(CLOSE_RESTART, None)
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
                    self.rules.check_deadlines()
                    continue
                self._handle_frame(frame)
        except CloseClient as close:
            reason = f"closed {close.code}: {close.message or ''}"
            if close.message:
                connection.send(encode(error(close.message)))
            connection.close(close.code, close.message or "")
        except ConnectionClosed:
            reason = connection.end_reason or reason
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

    def _receive_timeout(self) -> float | None:
        wait = self.rules.seconds_to_deadline()
        return None if wait is None else wait + 0.01

    # -- frames --------------------------------------------------------------------

    def _handle_frame(self, frame: Any) -> None:
        try:
            message = parse_client_frame(frame)
            if message.type == "ping":
                self.connection.send(encode(pong()))
            elif message.type == "init":
                self.rules.identify(message.payload)
            elif message.type == "auth":
                self.connection.send(encode(self.rules.refresh(message.payload)))
        except ProtocolError as problem:
            self.connection.send(encode(error(str(problem))))
        self.rules.check_deadlines()
