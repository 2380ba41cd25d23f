"""Flask-SocketIO 5.x serving Callwire's events: the Socket.IO peer every benchmark compares with.

Bench only (``bench/requirements.txt``; never part of the service). It is
what a team leaving Flask-SocketIO runs today, set up as fairly as it allows:
gunicorn's gevent worker (``gunicorn -k gevent bench.peers.socketio_app:app``,
run from ``bench/peers/`` so Callwire's gunicorn.conf.py is not loaded),
``async_mode='gevent'`` (simple-websocket, as Callwire), the same ping
interval, ping timeout and buffer size, one room per user, and a publish
endpoint with the same body and answer as ``POST /api/v6/call/events``
(``X-API-Key`` from ``EVENTS_API_KEY``; one event or a list).

A client names its user either way Flask-SocketIO apps do: in the connect
``auth`` payload (``bench.socketio_load``) or with an ``init`` event after
connecting (``bench.side_by_side``); either answers with a ``connected``
event. It trusts that ``userId`` (no token check, no history, no ordering
rules, no validation): less work than Callwire does per connection and event.
"""

from __future__ import annotations

import itertools
import os
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, request
from flask_socketio import SocketIO, join_room

app = Flask(__name__)
socketio = SocketIO(
    app,
    async_mode="gevent",
    cors_allowed_origins="*",
    ping_interval=25,
    ping_timeout=20,
    max_http_buffer_size=65536,
)

API_KEY = os.environ.get("EVENTS_API_KEY", "test-events-key")
_ids = itertools.count(int(time.time() * 1000) * 1000)
#: Sockets per user (the publish answer's ``delivered``).
_members: dict[str, int] = {}


def _join(user: Any) -> None:
    """Put this socket in its user's room and answer ``connected``, as Callwire does."""
    user = str(user or "").strip().lower()
    join_room(user)
    _members[user] = _members.get(user, 0) + 1
    socketio.emit("connected", {"type": "connected", "userId": user,
                                "message": "Successfully connected to WebSocket server"},
                  to=request.sid)


@socketio.on("connect")
def connect(auth: Any = None) -> None:
    if isinstance(auth, dict) and auth.get("userId"):
        _join(auth["userId"])


@socketio.on("init")
def init(payload: Any = None) -> None:
    _join((payload or {}).get("userId") if isinstance(payload, dict) else None)


def _emit(item: dict) -> dict:
    """Emit one posted event to its user's room, as the event object Callwire sends."""
    user = str(item.get("userId", "")).strip().lower()
    event = {
        "event": "call.status.changed",
        "callId": item.get("callId"),
        "status": item.get("status"),
        "data": item.get("data") or {},
        "id": f"{next(_ids):016d}",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    socketio.emit("call.status.changed", event, to=user)
    return {"id": event["id"], "delivered": _members.get(user, 0)}


@app.post("/api/v6/call/events")
def publish():
    if request.headers.get("X-API-Key") != API_KEY:
        return {"success": False, "message": "Missing or wrong X-API-Key"}, 401
    body = request.get_json(force=True)
    if isinstance(body, list):
        return {"success": True, "data": [{"code": 200, "success": True, **_emit(i)}
                                          for i in body]}
    return {"success": True, "data": _emit(body)}


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
