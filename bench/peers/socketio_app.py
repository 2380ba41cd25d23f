"""Flask-SocketIO 5.x serving the same events: the Python real-time peer Callwire is compared to.

Run under the same gunicorn gevent worker as Callwire
(``gunicorn -k gevent bench.peers.socketio_app:app``; its packages are in
``bench/requirements.txt``, never in the service's). A socket.io client
emits ``init`` with ``{"userId": ...}`` (what Flask-SocketIO apps do) and
joins its user's room; a publish emits each posted object as
``call.status.changed`` to that room. Like the floor it validates nothing
and keeps no history.
"""

from __future__ import annotations

import itertools
import os

from flask import Flask, request
from flask_socketio import SocketIO, emit, join_room

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent", ping_interval=25, cors_allowed_origins="*")

API_KEY = os.environ.get("EVENTS_API_KEY", "test-events-key")
_ids = itertools.count(1)
_members: dict[str, int] = {}


@socketio.on("init")
def init(payload):
    user = str((payload or {}).get("userId", "")).strip().lower()
    join_room(user)
    _members[user] = _members.get(user, 0) + 1
    emit("connected", {"type": "connected", "userId": user,
                       "message": "Successfully connected to WebSocket server"})


def _emit(item: dict) -> dict:
    user = str(item.get("userId", "")).lower()
    socketio.emit("call.status.changed", item, to=user)
    return {"id": str(next(_ids)), "delivered": _members.get(user, 0)}


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
