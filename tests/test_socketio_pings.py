"""Engine.IO pings (docs/protocol.md §9): each socket's own timers send them and drop
a client that stops answering (python-engineio's monitor task does not run).

The live test sees pings come and go on both transports with
``WS_PING_INTERVAL=1``; the drop after ``pingTimeout`` (20 s on a live server)
is shown on the socket class itself, with a short timeout.
"""

from __future__ import annotations

import json
import time

import engineio
import engineio.packet as eio_packet
import engineio.socket
import gevent
import websocket

from tests.support.socketio_fixtures import Polling, event_body, new_user
from tests.support.tokens import emulator_token
from webapp.transports.socketio import CallwireEngineSocket


def test_pings_come_every_interval_on_both_transports_while_answered(server_factory):
    live = server_factory({"WS_PING_INTERVAL": "1"}, name="socketio-pings")
    user = new_user("pings")
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{live.port}/socket.io/?EIO=4&transport=websocket", timeout=5)
    opened = ws.recv()
    assert opened.startswith("0{") and '"pingInterval":1000' in opened
    ws.send("40" + json.dumps({"token": emulator_token(user)}))
    assert ws.recv().startswith("40{")
    assert ws.recv().startswith('42["connected"')
    polling = Polling(live.http)
    polling.join(user)
    started = time.monotonic()
    for _ in range(2):  # a pong brings the next ping one interval later
        assert ws.recv() == "2"
        ws.send("3")
        assert polling.get() == ["2"]
        assert polling.post("3").status_code == 200
    assert 1.5 < time.monotonic() - started < 5
    answer = live.publish(event_body(user, "call", "ringing")).json()["data"]
    assert json.loads(ws.recv()[2:])[1]["id"] == answer["id"]
    assert polling.events()[0][1]["id"] == answer["id"]
    ws.close()
    assert "Traceback" not in live.log()


def engine_socket(ping_timeout: float) -> tuple[CallwireEngineSocket, list[str]]:
    """A socket of ours on a bare Engine.IO server with a short ``pingTimeout``."""
    server = engineio.Server(async_mode="gevent", ping_interval=0.05, ping_timeout=ping_timeout,
                             monitor_clients=False)
    ends: list[str] = []
    server.on("disconnect", lambda sid, reason: ends.append(reason))
    sock = engineio.socket.Socket(server, "s1")
    sock.__class__ = CallwireEngineSocket
    server.sockets[sock.sid] = sock
    sock.connected = True
    sock.schedule_ping()
    return sock, ends


def test_a_client_that_stops_answering_pings_is_dropped_by_its_socket_timer():
    sock, ends = engine_socket(ping_timeout=0.2)
    gevent.sleep(0.1)  # the ping is sent after pingInterval (0.05 s)
    assert sock.queue.get(block=False).packet_type == eio_packet.PING
    sock.receive(eio_packet.Packet(eio_packet.PONG))  # answered: the next one comes
    gevent.sleep(0.1)
    assert sock.queue.get(block=False).packet_type == eio_packet.PING
    assert not ends
    gevent.sleep(0.3)  # not answered within pingTimeout
    assert ends == [sock.server.reason.PING_TIMEOUT]
    assert sock.closed and sock.sid not in sock.server.sockets
