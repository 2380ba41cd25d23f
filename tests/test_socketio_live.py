"""The Socket.IO layer against a live server (docs/protocol.md §9).

The real socket.io-client from npm (driven from Node) for what browsers do:
transports, events, resume, snapshot, refusals, refresh and expiry, slow
consumers. python-socketio's client for the rest.
"""

from __future__ import annotations

import time

import pytest
import requests
import socketio

from tests.support.socketio_fixtures import event_body, new_user
from tests.support.tokens import emulator_token


@pytest.fixture(scope="module")
def tight_server():
    """A server with small limits, legacy init allowed and one allowed origin."""
    from tests.support.server import start_server

    live = start_server(
        {
            "WS_SEND_QUEUE": "200",
            "WS_INIT_TIMEOUT": "1",
            "WS_MAX_CONNECTIONS_PER_USER": "2",
            "WS_MAX_MESSAGE_BYTES": "4096",
            "WS_REQUIRE_TOKEN": "false",
            "ALLOWED_ORIGINS": "http://allowed.example",
            "WS_WRITE_TIMEOUT": "1",
        },
        name="socketio-tight",
    )
    yield live
    live.stop()


# -- the real socket.io-client ------------------------------------------------------


@pytest.mark.parametrize(
    ("transports", "first", "upgrades"),
    [(None, "polling", True), (["websocket"], "websocket", False), (["polling"], "polling", False)],
    ids=["default", "websocket-only", "polling-only"],
)
def test_socketio_client_gets_events_on_every_transport(
    server, node_clients, transports, first, upgrades
):
    user = new_user()
    client = node_clients()
    options = {} if transports is None else {"transports": transports}
    client.connect(server.http, auth={"token": emulator_token(user)}, **options)
    opened = client.next("open")
    assert opened["transport"] == first
    connected = client.event("connected")
    assert connected["type"] == "connected"
    assert connected["userId"] == user
    assert connected["message"] == "Successfully connected to WebSocket server"
    if upgrades:
        upgrade = client.next("upgrade")
        assert upgrade["transport"] == "websocket"
    if first == "websocket" or upgrades:
        # Node's ws offers permessage-deflate, as browsers do; the server refuses it.
        socket_info = upgrade if upgrades else opened
        assert socket_info["extensions"] == ""
    body = event_body(user, "call", "ringing", customerNumber="+1555")
    answer = server.publish(body)
    event = client.event("call.status.changed")
    assert event["id"] == answer.json()["data"]["id"]
    assert (event["callId"], event["status"], event["data"]) == (
        body["callId"], "ringing", {"customerNumber": "+1555"})
    # Written on the transport it came on: no drop, no reconnect and resume.
    assert not [m for m in client.seen if m["type"] == "disconnect"]
    if transports == ["polling"]:
        assert not [m for m in client.quiet(0.3) if m["type"] == "upgrade"]


def test_socketio_client_resumes_after_a_dropped_transport(server, node_clients):
    user = new_user()
    client = node_clients()
    client.connect(server.http, auth={"token": emulator_token(user)}, auth_function=True)
    assert client.event("connected").get("recovered") is None
    first = server.publish(event_body(user, "call-r", "ringing")).json()["data"]["id"]
    assert client.event("call.status.changed")["id"] == first
    client.command("dropTransport")
    assert client.next("disconnect")["reason"] in {"forced close", "transport close"}
    second = server.publish(event_body(user, "call-r", "in-progress")).json()["data"]["id"]
    client.next("connect", timeout=10)
    assert client.event("connected")["recovered"] is True
    replayed = client.event("call.status.changed")
    assert (replayed["id"], replayed["status"]) == (second, "in-progress")
    third = server.publish(event_body(user, "call-r", "ended")).json()["data"]["id"]
    assert client.event("call.status.changed")["id"] == third
    ids = [m["args"][0]["id"] for m in client.seen
           if m["type"] == "event" and m["name"] == "call.status.changed"]
    assert ids == [first, second, third]


def test_socketio_client_gets_the_snapshot(server, node_clients):
    user = new_user()
    live = server.publish(event_body(user, "call-live", "in-progress")).json()["data"]["id"]
    server.publish(event_body(user, "call-done", "ringing"))
    server.publish(event_body(user, "call-done", "ended"))
    client = node_clients()
    client.connect(server.http, auth={"token": emulator_token(user)})
    names = []
    for _ in range(2):
        message = client.next("event")
        names.append((message["name"], message["args"][0].get("id")))
    assert names == [("connected", None), ("call.status.changed", live)]
    assert not [m for m in client.quiet(0.3) if m["type"] == "event"]


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"token": "not-a-token"}, "Authentication failed: invalid token"),
        ({"userId": "someone@example.com"},
         "Authentication failed: init requires a Firebase ID token"
         " (development mode: get one from POST /dev/token)"),
        ({"userId": "someone@example.com", "token": emulator_token("other@example.com")},
         "Authentication failed: token email does not match userId"),
        ({"token": emulator_token("late@example.com", ttl=-10)},
         "Authentication failed: token expired"),
    ],
    ids=["bad-token", "no-token", "other-user", "expired"],
)
def test_socketio_client_refused_with_connect_error(server, node_clients, auth, message):
    client = node_clients()
    client.connect(server.http, auth=auth)
    refusal = client.next("connect_error")
    assert refusal["message"] == message
    assert refusal["data"] == {"code": 1008}
    # A refusal is not retried by the client on its own.
    assert not [m for m in client.quiet(0.5) if m["type"] in {"connect", "reconnect_attempt"}]


def test_socketio_token_refresh_and_expiry(server, node_clients):
    refreshed_user, expiring_user = new_user("refresh"), new_user("expire")
    refreshed, expiring = node_clients(), node_clients()  # both ready: tokens minted now
    refreshed.connect(server.http, auth={"token": emulator_token(refreshed_user, ttl=4)},
                      transports=["websocket"])
    expiring.connect(server.http, auth={"token": emulator_token(expiring_user, ttl=4)},
                     transports=["websocket"])
    refreshed.event("connected")
    expiring.event("connected")
    refreshed.emit("auth", {"token": emulator_token(refreshed_user, ttl=600)}, ack=True)
    ack = refreshed.next("ack")["args"][0]
    assert ack["type"] == "authenticated" and ack["userId"] == refreshed_user
    assert refreshed.event("authenticated") == ack

    problem = expiring.event("error", timeout=10)
    assert problem == {"type": "error", "message": "Token expired: refresh it with an auth message"}
    assert expiring.next("disconnect")["reason"] == "io server disconnect"
    assert not [m for m in expiring.quiet(0.5) if m["type"] in {"connect", "reconnect_attempt"}]
    # The refreshed one outlived its first token.
    answer = server.publish(event_body(refreshed_user, "call-x", "ringing")).json()["data"]
    assert refreshed.event("call.status.changed")["id"] == answer["id"]
    assert not [m for m in refreshed.seen if m["type"] == "disconnect"]


def test_slow_socketio_client_is_closed_then_reconnects_and_resumes(tight_server, node_clients):
    user = new_user("slow")
    client = node_clients()
    client.connect(tight_server.http, auth={"token": emulator_token(user)}, auth_function=True,
                   transports=["websocket"])
    client.event("connected")
    client.command("pause")
    assert client.next("paused")["ok"] is True
    # 6 MB of events, more than the kernel buffers hold: the writer blocks, the
    # write times out (WS_WRITE_TIMEOUT=1) and the client is closed as too slow.
    big = "x" * 60_000
    ids = []
    for batch in range(5):
        body = [event_body(user, f"call-{batch}-{i}", "ended", blob=big) for i in range(20)]
        answer = tight_server.publish(body, timeout=20)
        assert answer.status_code == 200, answer.text
        ids += [r["id"] for r in answer.json()["data"]]
    deadline = time.monotonic() + 10
    while "too slow" not in tight_server.log().lower() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "too slow" in tight_server.log().lower()
    client.command("resume")
    assert client.next("disconnect", timeout=10)["reason"] == "transport close"
    client.next("connect", timeout=10)
    assert client.event("connected")["recovered"] is True
    received = []
    deadline = time.monotonic() + 15
    while ids[-1] not in received and time.monotonic() < deadline:
        received.append(client.event("call.status.changed", timeout=10)["id"])
    everything = [m["args"][0]["id"] for m in client.seen
                  if m["type"] == "event" and m["name"] == "call.status.changed"]
    # Nothing lost, nothing twice: every published id, once, in order.
    assert everything == ids


# -- python-socketio's client --------------------------------------------------------


def test_init_event_with_acknowledgement(server, py_clients):
    user = new_user()
    client = py_clients().connect(server.http, transports=["websocket"])
    assert client.sio.call("ping", timeout=5) == {"type": "pong"}
    assert client.event("pong") == {"type": "pong"}
    answer = client.sio.call("init", {"userId": user, "token": emulator_token(user)}, timeout=5)
    assert answer["type"] == "connected" and answer["userId"] == user
    assert client.event("connected") == answer
    again = client.sio.call("init", {"token": emulator_token(user)}, timeout=5)
    assert again["type"] == "connected"
    other = client.sio.call("init", {"token": emulator_token(new_user())}, timeout=5)
    assert other == {"type": "error", "message": f"Already initialised as another user ({user})"}
    unknown = client.sio.call("subscribe", {"x": 1}, timeout=5)
    assert unknown == {"type": "error", "message": "Unknown message type: subscribe"}
    reserved = client.sio.call("connect", {}, timeout=5)
    assert reserved == {"type": "error", "message": "Unknown message type: connect"}
    assert client.sio.connected


def test_init_event_with_a_bad_token_is_answered_then_disconnected(server, py_clients):
    client = py_clients().connect(server.http)
    answer = client.sio.call("init", {"token": "garbage"}, timeout=5)
    assert answer == {"type": "error", "message": "Authentication failed: invalid token"}
    assert client.event("error") == answer
    assert client.next("disconnect")[1] == "server disconnect"


def test_init_timeout_ends_a_silent_client(tight_server, py_clients):
    client = py_clients().connect(tight_server.http, transports=["polling"])
    started = time.monotonic()
    problem = client.event("error", timeout=5)
    assert problem == {"type": "error", "message": "Init timeout: no valid init within 1s"}
    assert client.next("disconnect")[1] == "server disconnect"
    assert 0.9 < time.monotonic() - started < 3


def test_legacy_init_and_the_per_user_limit_across_transports(tight_server, py_clients, clients):
    user = new_user("limit")
    raw = clients(tight_server.ws, origin="http://allowed.example")
    assert raw.init(user)["type"] == "connected"  # legacy: userId only
    sio = py_clients().connect(tight_server.http, auth={"userId": user.upper()},
                               transports=["polling"])
    assert sio.event("connected")["userId"] == user
    third = py_clients()
    with pytest.raises(socketio.exceptions.ConnectionError) as refused:
        third.connect(tight_server.http, auth={"userId": user}, transports=["polling"])
    assert "failed to connect" in str(refused.value)
    refusal = third.event("connect_error")
    assert refusal["message"].startswith(f"Too many connections: {user} already has 2 open")
    assert refusal["data"] == {"code": 1008}
    # Both existing tabs are kept and still served, with the same ids.
    answer = tight_server.publish(event_body(user, "call-l", "ringing")).json()["data"]
    assert raw.recv_until(lambda m: m.get("event") == "call.status.changed")["id"] == answer["id"]
    assert sio.event("call.status.changed")["id"] == answer["id"]


def test_raw_and_socketio_tabs_get_the_same_events_and_others_none(server, py_clients, clients):
    user, other = new_user("both"), new_user("other")
    raw = clients(server.ws)
    assert raw.init(user, token=emulator_token(user))["type"] == "connected"
    tab = py_clients().connect(server.http, auth={"token": emulator_token(user)})
    tab.event("connected")
    stranger = py_clients().connect(server.http, auth={"token": emulator_token(other)},
                                    transports=["websocket"])
    stranger.event("connected")
    sent = []
    for status in ("initiated", "ringing", "in-progress", "ended"):
        sent.append(server.publish(event_body(user, "call-both", status)).json()["data"]["id"])
    over_raw = [raw.recv_until(lambda m: m.get("event") == "call.status.changed")["id"]
                for _ in sent]
    over_sio = [tab.event("call.status.changed")["id"] for _ in sent]
    assert over_raw == over_sio == sent
    # A test message arrives under the event name it carries on the raw path.
    test = requests.post(
        f"{server.http}/api/v6/call/websocket/test",
        json={"targetUserId": user, "message": "hello", "event": "test-event"},
        headers={"Authorization": f"Bearer {emulator_token(user)}"}, timeout=5,
    )
    assert test.status_code == 200 and test.json()["delivered"] == 2
    assert tab.event("test-event")["data"]["message"] == "hello"
    assert stranger.nothing_within(0.3) == []
    listing = requests.get(
        f"{server.http}/api/v6/call/websocket/clients",
        headers={"Authorization": f"Bearer {emulator_token(user)}"}, timeout=5,
    ).json()["data"]
    transports = sorted(c["transport"] for u in listing["users"] for c in u["connections"])
    assert transports == ["socket.io", "websocket"]


def test_allowed_origins_apply_to_socketio(tight_server):
    base = f"{tight_server.http}/socket.io/?EIO=4&transport=polling"
    allowed = requests.get(base, headers={"Origin": "http://allowed.example"}, timeout=5)
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "http://allowed.example"
    foreign = requests.get(base, headers={"Origin": "http://evil.example"}, timeout=5)
    assert foreign.status_code == 400
    assert "Not an accepted origin" in foreign.text


def test_any_origin_when_allowed_origins_is_empty(server):
    answer = requests.get(f"{server.http}/socket.io/?EIO=4&transport=polling",
                          headers={"Origin": "http://elsewhere.example"}, timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == "http://elsewhere.example"
    opened = answer.text
    assert opened.startswith("0{") and '"pingInterval":25000' in opened
    assert '"pingTimeout":20000' in opened and '"maxPayload":65536' in opened


def test_engineio_v3_client_gets_a_clear_400(server):
    answer = requests.get(f"{server.http}/socket.io/?EIO=3&transport=polling", timeout=5)
    assert answer.status_code == 400
    assert "unsupported version" in answer.text
