"""The WebSocket endpoint at ``/`` (the seed's URL) and ``/ws``.

Before flask-sock performs the handshake, a hook checks the Origin, admits
the client under the worker and per-address caps (``webapp.admission``: 503
or 429 otherwise), removes the permessage-deflate offer (141 KiB per
connection, docs/stack-notes.md) and wraps the raw socket so every write is whole
and bounded in time.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request
from flask_sock import Sock

from webapp.admission import Refused, client_address
from webapp.bodies import CLOSE_CONNECTION
from webapp.connection import SafeSocket, WebSocketConnection
from webapp.errors import error_response
from webapp.realtime import realtime
from webapp.session import Session

bp = Blueprint("ws", __name__)
sock = Sock()

_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


def _is_upgrade() -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


@bp.before_request
def prepare_handshake() -> Any:
    """Refuse foreign origins and prepare the socket before the handshake happens."""
    if not _is_upgrade():
        return None
    node = realtime()
    allowed = node.settings.allowed_origins
    origin = request.headers.get("Origin", "").rstrip("/")
    if allowed and origin not in allowed:
        return error_response(403, "Origin not allowed")
    if node.shutting_down:
        return error_response(503, "Server restarting")
    environ = request.environ
    g.client_address = client_address(environ, node.settings.forwarded_for_hops)
    try:
        g.admission = node.admission.admit(g.client_address)
    except Refused as refusal:
        # Close at once: a flood must not keep its refused sockets as keep-alives.
        environ[CLOSE_CONNECTION] = True
        response = error_response(refusal.status, refusal.message)
        response.headers["Retry-After"] = str(refusal.retry_after)
        return response
    environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    for key in _SOCKET_KEYS:
        raw = environ.get(key)
        if raw is not None and not isinstance(raw, SafeSocket):
            environ[key] = SafeSocket(raw, node.settings.write_timeout)
    return None


def serve(ws: Any) -> None:
    """Run the protocol for one accepted WebSocket."""
    node = realtime()
    connection = WebSocketConnection(
        ws,
        send_queue=node.settings.send_queue,
        send_queue_bytes=node.settings.send_queue_bytes,
        write_timeout=node.settings.write_timeout,
        remote=g.get("client_address", ""),
    )
    connection.admission = g.get("admission")
    Session(node, connection).run()


@bp.teardown_request
def release_admission(_error: BaseException | None) -> None:
    """Give the client's place back, even if the handshake itself failed."""
    ticket = g.pop("admission", None)
    if ticket is not None:
        ticket.release()


sock.route("/", bp=bp, endpoint="socket_root")(serve)
sock.route("/ws", bp=bp, endpoint="socket_ws")(serve)
