"""The demo page at ``GET /`` (a plain HTTP GET; WebSocket upgrades go to blueprints.ws).

The page itself lives in ``webapp/templates/index.html`` and uses the browser
client served at ``/static/callwire.js`` (docs/browser-client.md).
"""

from __future__ import annotations

from flask import Blueprint, render_template, request

from webapp.config import MAKE_RUN_DEFAULTS
from webapp.realtime import realtime

bp = Blueprint("pages", __name__)

#: Close codes of docs/protocol.md §5, shown on the page: (code, meaning, what a client should do).
CLOSE_CODES: tuple[tuple[int, str, str], ...] = (
    (1000, "normal close", "stop"),
    (1008, "policy: authentication failed, init timeout, too many connections",
     "fix the cause, not retry blindly"),
    (1009, "frame too large", "fix the client"),
    (1011, "internal error", "retry with backoff"),
    (1012, "server restarting", "reconnect now, resume"),
    (1013, "try again later: service busy or Redis unreachable", "retry with backoff, resume"),
    (4001, "token expired", "get a fresh token, reconnect"),
    (4008, "too slow to keep up", "reconnect, resume with lastEventId"),
)


@bp.get("/")
def index() -> str:
    """Serve the demo page; development mode adds token minting and a sample call.

    ``?transport=socket.io`` makes the page connect over Socket.IO
    (callwire-socketio.js and the socket.io-client bundle) instead of the raw
    WebSocket.
    """
    settings = realtime().settings
    transport = "socket.io" if request.args.get("transport") == "socket.io" else "websocket"
    return render_template(
        "index.html", development=settings.development, close_codes=CLOSE_CODES,
        publish_key=_public_publish_key(settings.events_api_key), transport=transport,
    )


def _public_publish_key(key: str | None) -> str | None:
    """Show the publish key in the snippet only if it is make run's public default.

    Returns "" for a key of the operator's own (never shown) and None when
    publishing is off, so the page can say which.
    """
    if key is None:
        return None
    return key if key == MAKE_RUN_DEFAULTS["EVENTS_API_KEY"] else ""
