"""The floor: a bare flask-sock server that only parses the POST body and writes it to sockets.

Run under the same gunicorn gevent worker as Callwire
(``gunicorn -k gevent bench.peers.bare:app``). A socket sends the raw
protocol's init (its ``userId`` is all that is read: no token check, no
history, no ordering, no validation); a publish writes each posted object,
re-encoded, to every socket of its ``userId``. One lock per socket keeps
concurrent publishers from interleaving frames (simple-websocket's ``send``
is not safe from several greenlets, docs/stack-notes.md).
"""

from __future__ import annotations

import itertools
import json
import os

import gevent.lock
from flask import Flask, request
from flask_sock import Sock

app = Flask(__name__)
app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25, "max_message_size": 65536}
sock = Sock(app)

API_KEY = os.environ.get("EVENTS_API_KEY", "test-events-key")
_sockets: dict[str, dict[object, gevent.lock.Semaphore]] = {}
_ids = itertools.count(1)


@sock.route("/")
def websocket(ws) -> None:
    user = None
    try:
        while True:
            message = json.loads(ws.receive())
            if message.get("type") == "init" and user is None:
                user = str(message["payload"]["userId"]).strip().lower()
                _sockets.setdefault(user, {})[ws] = gevent.lock.Semaphore()
                ws.send(json.dumps({"type": "connected", "userId": user,
                                    "message": "Successfully connected to WebSocket server"}))
            elif message.get("type") == "ping":
                ws.send('{"type":"pong"}')
    finally:
        if user is not None:
            _sockets.get(user, {}).pop(ws, None)


def _write(item: dict) -> dict:
    frame = json.dumps(item, separators=(",", ":"))
    delivered = 0
    for ws, lock in list(_sockets.get(str(item.get("userId", "")).lower(), {}).items()):
        with lock:
            ws.send(frame)
        delivered += 1
    return {"id": str(next(_ids)), "delivered": delivered}


@app.post("/api/v6/call/events")
def publish():
    if request.headers.get("X-API-Key") != API_KEY:
        return {"success": False, "message": "Missing or wrong X-API-Key"}, 401
    body = request.get_json(force=True)
    if isinstance(body, list):
        return {"success": True, "data": [{"code": 200, "success": True, **_write(i)}
                                          for i in body]}
    return {"success": True, "data": _write(body)}


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
