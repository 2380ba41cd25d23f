"""Garbage Engine.IO and Socket.IO packets (docs/protocol.md §9): clean errors, never a 500.

Raw HTTP long-polling requests and a raw WebSocket speak the wire format by
hand, so every malformed shape can be sent; after each, the server must still
serve everyone else.
"""

from __future__ import annotations

import json

import pytest
import requests
import websocket

from tests.support.socketio_fixtures import SEPARATOR, Polling, event_body, new_user
from tests.support.tokens import emulator_token


@pytest.fixture
def log_since(server):
    """Return the server log written since the test started."""
    start = len(server.log())
    return lambda: server.log()[start:]


def assert_still_serving(server) -> None:
    user = new_user("after")
    session = Polling(server.http)
    session.join(user)
    answer = server.publish(event_body(user, "call", "ringing")).json()["data"]
    assert session.events()[0][1]["id"] == answer["id"]


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe\xfd", b"zz", b"b!!!notbase64", b"9", b"4" + b"x" * 70_000,
     SEPARATOR.join(["4x"] * 20).encode()],
    ids=["not-utf8", "bad-type", "bad-base64", "unknown-type", "oversized", "too-many-packets"],
)
def test_garbage_polling_bodies_get_a_400(server, log_since, body):
    session = Polling(server.http)
    answer = session.post(body)
    assert answer.status_code == 400
    assert answer.text == '"Bad Request"'
    assert "Traceback" not in log_since()
    # The session is gone; everyone else is still served.
    assert requests.get(session.url, timeout=5).status_code == 400
    assert_still_serving(server)


def test_unknown_sessions_methods_and_namespaces(server, log_since):
    unknown = f"{server.http}/socket.io/?EIO=4&transport=polling&sid=nope"
    for answer in (requests.get(unknown, timeout=5), requests.post(unknown, data="40", timeout=5)):
        assert answer.status_code == 400
        assert answer.text == '"Invalid session nope"'
    assert requests.put(unknown, timeout=5).status_code == 405
    bad_transport = requests.get(f"{server.http}/socket.io/?EIO=4&transport=carrier", timeout=5)
    assert (bad_transport.status_code, bad_transport.text) == (400, '"Invalid transport"')
    session = Polling(server.http)
    assert session.post("40/admin,").status_code == 200
    assert session.get() == ['44/admin,{"message":"Invalid namespace"}']
    assert "Traceback" not in log_since()


@pytest.mark.parametrize(
    "packet",
    ['451-["init",{"_placeholder":true,"num":0}]', '42{"type":"init"}', "42[]", "42[1,2]",
     "42" + "[" * 50_000, "44{}", "49", '42["init"'],
    ids=["binary-attachment", "not-a-list", "empty", "name-not-string", "deep", "connect-error",
         "unknown-type", "truncated"],
)
def test_garbage_socketio_packets_get_the_format_error(server, log_since, packet):
    user = new_user("garbage")
    session = Polling(server.http)
    session.join(user)
    assert session.post(packet).status_code == 200
    assert session.events() == [["error", {"type": "error", "message": "Invalid message format"}]]
    if packet.startswith("451-"):
        # An attachment that follows is refused as well, and nothing was put together.
        assert session.post("bAAE=").status_code == 200  # base64 of b"\x00\x01"
    # The client is still served.
    answer = server.publish(event_body(user, "call", "ringing")).json()["data"]
    events = session.events()
    if events and events[0][0] == "error":
        events = events[1:] or session.events()
    assert events[0][1]["id"] == answer["id"]
    assert "Traceback" not in log_since()


def test_garbage_over_websocket(server, log_since):
    user = new_user("ws")
    url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"
    ws = websocket.create_connection(url, timeout=5)
    assert ws.recv().startswith("0{")
    ws.send("40" + json.dumps({"token": emulator_token(user)}))
    assert ws.recv().startswith("40{")
    assert ws.recv().startswith('42["connected"')
    ws.send_binary(b"\x01\x02")  # a binary message: no use for it
    refused = ["error", {"type": "error", "message": "Invalid message format"}]
    assert json.loads(ws.recv()[2:]) == refused
    ws.send("42nonsense")
    assert json.loads(ws.recv()[2:])[1]["message"] == "Invalid message format"
    ws.send("4" + "x" * 70_000)  # larger than WS_MAX_MESSAGE_BYTES: closed with 1009
    opcode, data = ws.recv_data()
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(data[:2], "big") == 1009
    ws.close()
    ws.shutdown()  # websocket-client leaves the socket open after the server's close frame
    garbage = websocket.create_connection(url, timeout=5)
    assert garbage.recv().startswith("0{")
    garbage.send("zz")  # not an Engine.IO packet: the transport is closed
    opcode, _ = garbage.recv_data()
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    garbage.close()
    garbage.shutdown()
    assert "Traceback" not in log_since()
    assert_still_serving(server)


def test_new_sessions_meet_the_handshake_caps(server_factory):
    live = server_factory({"WS_MAX_PENDING_PER_ADDRESS": "2"}, name="socketio-caps")
    waiting = [Polling(live.http), Polling(live.http)]  # two sessions without init yet
    refused = requests.get(f"{live.http}/socket.io/?EIO=4&transport=polling", timeout=5)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "2"
    assert refused.json()["message"].startswith("Too many connections waiting for init")
    waiting[0].join(new_user("caps"))  # an init frees its place in the per-address count
    admitted = Polling(live.http)
    admitted.join(new_user("caps2"))
