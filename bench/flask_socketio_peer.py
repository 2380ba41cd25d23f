"""Flask-SocketIO 5.x serving Callwire's events: the peer the Socket.IO benchmark compares with.

Bench only (``bench/requirements.txt``; never part of the service). It is
what a team leaving Flask-SocketIO runs today, set up as fairly as it allows:
gunicorn's gevent worker, ``async_mode='gevent'`` (simple-websocket, as
Callwire), the same ping interval and buffer size, one room per user, and a
publish endpoint with the same body and answer as ``POST /api/v6/call/events``.
It trusts the ``userId`` of the connect payload (no token check, no history,
no ordering rules): less work than Callwire does per connection and event.

    gunicorn -k gevent --worker-connections 20000 -b 127.0.0.1:3001 \
        bench.flask_socketio_peer:app
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime

from flask import Flask, jsonify, request
from flask_socketio import ConnectionRefusedError, SocketIO, join_room

app = Flask(__name__)
socketio = SocketIO(
    app,
    async_mode="gevent",
    cors_allowed_origins="*",
    ping_interval=25,
    ping_timeout=20,
    max_http_buffer_size=65536,
)
_ids = itertools.count(int(time.time() * 1000) * 1000)


@socketio.on("connect")
def connect(auth):
    user = (auth or {}).get("userId") if isinstance(auth, dict) else None
    if not isinstance(user, str) or not user.strip():
        raise ConnectionRefusedError("userId required")
    user = user.strip().lower()
    join_room(user)
    socketio.emit(
        "connected",
        {"type": "connected", "userId": user,
         "message": "Successfully connected to WebSocket server"},
        to=request.sid,
    )


@app.post("/api/v6/call/events")
def publish():
    body = request.get_json()
    event = {
        "event": "call.status.changed",
        "callId": body["callId"],
        "status": body["status"],
        "data": body.get("data") or {},
        "id": f"{next(_ids):016d}",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    socketio.emit("call.status.changed", event, to=body["userId"].strip().lower())
    return jsonify({"success": True, "data": {"id": event["id"], "delivered": 1}})


@app.get("/healthz")
def healthz():
    return jsonify({"success": True})
