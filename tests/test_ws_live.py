"""The WebSocket protocol against the real gunicorn server (docs/protocol.md).

Uses the session's default server: development mode, tokens required,
in-process broker, default limits. Every test uses its own users.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid

import pytest
import requests
import websocket

from tests.support.rawws import OP_CLOSE, OP_TEXT, RawWebSocket, close_code
from tests.support.tokens import emulator_token
from tests.support.wsclient import Client, ConnectionClosedError

CONNECTED_TEXT = "Successfully connected to WebSocket server"
INVALID_FORMAT = {"type": "error", "message": "Invalid message format"}
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def new_user(name: str = "user") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}@example.com"


def assert_connected(answer: dict, user_id: str) -> None:
    """The seed's object exactly, extra keys allowed after it."""
    assert list(answer)[:3] == ["type", "userId", "message"], answer
    assert answer["type"] == "connected"
    assert answer["userId"] == user_id
    assert answer["message"] == CONNECTED_TEXT
    assert set(answer) <= {"type", "userId", "message", "expiresAt", "recovered"}


def assert_still_open(client: Client) -> None:
    client.send_json({"type": "ping"})
    assert client.recv_json(timeout=5) == {"type": "pong"}


def assert_error_then_close(client: Client, code: int, *words: str) -> dict:
    answer = client.recv_json(timeout=5)
    assert answer["type"] == "error", answer
    assert set(answer) == {"type", "message"}
    for word in words:
        assert word.lower() in answer["message"].lower(), answer
    assert client.wait_closed(5)[0] == code
    return answer


def send_test_message(server, target: str, text: str, sender: str | None = None) -> dict:
    response = requests.post(
        f"{server.http}/api/v6/call/websocket/test",
        json={"targetUserId": target, "message": text, "event": "test.event"},
        headers={"Authorization": f"Bearer {emulator_token(sender or new_user('sender'))}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    return response.json()


def connect(server, clients, email: str, path: str = "/") -> Client:
    client = clients(f"ws://127.0.0.1:{server.port}{path}")
    assert_connected(client.init(email, token=emulator_token(email)), email)
    return client


# -- the seed's messages ------------------------------------------------------------------


def test_seed_init_gets_exactly_the_connected_object(server, clients):
    email = new_user("alice")
    client = clients(server.ws)
    token = emulator_token(email)
    answer = client.init(email, token=token)
    assert_connected(answer, email)
    assert ISO_UTC.fullmatch(answer["expiresAt"])


@pytest.mark.parametrize(
    "frame",
    ["not json", "{'type': 'init'}", "", "[1, 2, 3]", '"init"', "42", "null",
     "{}", '{"payload": {}}', '{"type": 7}', '{"type": null}', '{"type": ["ping"]}',
     b'{"type": "ping"}', b"\x00\xff"],
)
def test_format_errors_keep_the_socket_open(server, clients, frame):
    client = clients(server.ws)
    client.send_raw(frame)
    assert client.recv_json() == INVALID_FORMAT
    # Still open and still usable: a ping, then an init, work afterwards.
    assert_still_open(client)
    email = new_user()
    assert_connected(client.init(email, token=emulator_token(email)), email)
    client.send_raw(frame)
    assert client.recv_json() == INVALID_FORMAT
    assert_still_open(client)


def test_binary_frame_before_and_after_init(server, clients):
    client = clients(server.ws)
    client.send_raw(b"\x01\x02\x03")
    assert client.recv_json() == INVALID_FORMAT
    email = new_user()
    assert_connected(client.init(email, token=emulator_token(email)), email)
    client.send_raw(b'{"type":"init"}')
    assert client.recv_json() == INVALID_FORMAT
    answer = send_test_message(server, email, "after binary")
    assert client.recv_json() == answer["data"]


def test_ping_pong_before_and_after_init(server, clients):
    client = clients(server.ws)
    for _ in range(3):
        assert_still_open(client)
    email = new_user()
    assert_connected(client.init(email, token=emulator_token(email)), email)
    assert_still_open(client)
    client.send_json({"type": "ping", "payload": {"anything": 1}})
    assert client.recv_json() == {"type": "pong"}


def test_unknown_type_is_an_error_and_the_socket_stays_open(server, clients):
    client = clients(server.ws)
    client.send_json({"type": "subscribe", "payload": {}})
    answer = client.recv_json()
    assert answer["type"] == "error"
    assert "unknown" in answer["message"].lower()
    assert answer != INVALID_FORMAT
    assert_still_open(client)


def test_auth_before_init_is_not_initialised(server, clients):
    email = new_user()
    client = clients(server.ws)
    client.send_json({"type": "auth", "payload": {"token": emulator_token(email)}})
    answer = client.recv_json()
    assert answer["type"] == "error"
    assert "not initialised" in answer["message"].lower()
    assert_still_open(client)
    assert_connected(client.init(email, token=emulator_token(email)), email)


def test_init_as_another_user_is_an_error_and_changes_nothing(server, clients):
    alice, bob = new_user("alice"), new_user("bob")
    client = connect(server, clients, alice)
    client.send_json({"type": "init", "payload": {"userId": bob, "token": emulator_token(bob)}})
    answer = client.recv_json()
    assert answer["type"] == "error"
    assert "another user" in answer["message"].lower()
    assert_still_open(client)
    # Still alice's: alice's messages arrive, bob's do not.
    send_test_message(server, bob, "for bob")
    mine = send_test_message(server, alice, "for alice")
    assert client.recv_json() == mine["data"]


def test_second_init_as_the_same_user_is_connected_again(server, clients):
    email = new_user()
    client = connect(server, clients, email)
    again = client.init(email.upper(), token=emulator_token(email))
    assert_connected(again, email)
    # Registered once: a message arrives once.
    first = send_test_message(server, email, "once")
    second = send_test_message(server, email, "twice")
    assert first["delivered"] == 1
    assert client.recv_json() == first["data"]
    assert client.recv_json() == second["data"]


# -- token mode ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        lambda email: {"userId": email},
        lambda email: {"userId": email, "token": ""},
        lambda email: {"userId": email, "token": None},
        lambda email: {},
    ],
)
def test_init_without_token_fails_with_1008(server, clients, payload):
    email = new_user()
    client = clients(server.ws)
    client.send_json({"type": "init", "payload": payload(email)})
    assert_error_then_close(client, 1008, "token")


@pytest.mark.parametrize(
    "make_token",
    [
        lambda email: "garbage",
        lambda email: "a.b.c",
        lambda email: emulator_token(email, project="another-project"),
        lambda email: emulator_token(email, ttl=-5),
        lambda email: emulator_token(None),
        lambda email: emulator_token(email)[:-20] + "x" * 20,
    ],
)
def test_bad_tokens_fail_with_1008(server, clients, make_token):
    email = new_user()
    client = clients(server.ws)
    client.send_json({"type": "init", "payload": {"userId": email, "token": make_token(email)}})
    assert_error_then_close(client, 1008, "authentication failed")


def test_token_email_must_match_user_id(server, clients):
    alice, mallory = new_user("alice"), new_user("mallory")
    client = clients(server.ws)
    client.send_json({"type": "init",
                      "payload": {"userId": alice, "token": emulator_token(mallory)}})
    assert_error_then_close(client, 1008, "authentication failed")


def test_user_id_may_be_omitted_with_a_token(server, clients):
    email = new_user()
    client = clients(server.ws)
    answer = client.init(token=emulator_token(email.upper()))
    assert_connected(answer, email)
    message = send_test_message(server, email, "hello")
    assert client.recv_json() == message["data"]


def test_user_id_of_the_wrong_type_is_an_error(server, clients):
    client = clients(server.ws)
    client.send_json({"type": "init", "payload": {"userId": 5, "token": emulator_token("a@b.c")}})
    answer = client.recv_json()
    assert answer["type"] == "error"
    assert "userId" in answer["message"]


def test_expiry_closes_with_4001_and_auth_refresh_extends(server, clients):
    email = new_user()
    short = emulator_token(email, ttl=2)
    expires = int(time.time()) + 2
    lapsing, refreshed, reinit = clients(server.ws), clients(server.ws), clients(server.ws)
    assert_connected(lapsing.init(email, token=short), email)
    assert_connected(refreshed.init(email, token=short), email)
    assert_connected(reinit.init(email, token=short), email)
    # A second init "changes nothing" (docs/protocol.md): not even the token deadline.
    again = reinit.init(email, token=emulator_token(email, ttl=600))
    assert_connected(again, email)
    assert again["expiresAt"] == lapsing_expiry(short)
    fresh = emulator_token(email.upper(), ttl=600)
    refreshed.send_json({"type": "auth", "payload": {"token": fresh}})
    answer = refreshed.recv_json()
    assert list(answer) == ["type", "userId", "expiresAt"]
    assert answer["type"] == "authenticated"
    assert answer["userId"] == email
    assert ISO_UTC.fullmatch(answer["expiresAt"])
    assert answer["expiresAt"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 500))

    # The unrefreshed one: an error, then 4001, within 5 s of exp (not before).
    error = lapsing.recv_json(timeout=8)
    assert error["type"] == "error"
    assert "expired" in error["message"].lower()
    code, _ = lapsing.wait_closed(5)
    closed_at = time.time()
    assert code == 4001
    assert expires - 1 <= closed_at <= expires + 5
    assert reinit.recv_json(timeout=5)["type"] == "error"
    assert reinit.wait_closed(5)[0] == 4001
    # The refreshed one outlives the first token.
    time.sleep(max(0.0, expires + 0.3 - time.time()))
    assert_still_open(refreshed)


def lapsing_expiry(token: str) -> str:
    """Return the token's exp as the server writes it (ISO 8601 UTC, milliseconds)."""
    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(claims["exp"]))


def test_auth_with_another_users_token_fails_with_1008(server, clients):
    alice, bob = new_user("alice"), new_user("bob")
    client = connect(server, clients, alice)
    client.send_json({"type": "auth", "payload": {"token": emulator_token(bob)}})
    assert_error_then_close(client, 1008, "another user")


@pytest.mark.parametrize(
    "payload",
    [{"token": "garbage"}, {"token": emulator_token("x@example.com", ttl=-1)}, {}],
)
def test_auth_with_a_bad_token_fails_with_1008(server, clients, payload):
    client = connect(server, clients, new_user())
    client.send_json({"type": "auth", "payload": payload})
    assert_error_then_close(client, 1008)


# -- users and delivery ---------------------------------------------------------------------


def test_emails_are_case_insensitive(server, clients):
    token_email = f"Alice-{uuid.uuid4().hex[:8]}@Example.COM"
    email = token_email.lower()
    client = clients(server.ws)
    answer = client.init(f"  {token_email.upper()}  ", token=emulator_token(token_email))
    assert_connected(answer, email)
    published = server.publish({"callId": f"call-{uuid.uuid4().hex}",
                                "userId": email.upper(), "status": "ringing", "data": {}})
    assert published.status_code == 200, published.text
    assert published.json()["data"]["delivered"] == 1
    assert client.recv_json()["id"] == published.json()["data"]["id"]
    message = send_test_message(server, f" {email.upper()} ", "case")
    assert message["delivered"] == 1
    assert client.recv_json() == message["data"]


def test_events_have_the_seed_shape_plus_id_and_timestamp(server, clients):
    email = new_user()
    client = connect(server, clients, email)
    call_id = f"call-{uuid.uuid4().hex}"
    data = {"type": "status-update", "assistantId": "7ac6d8a8", "customerNumber": "+15550100",
            "endedReason": "customer-busy"}
    ids = []
    for status in ("initiated", "ringing", "in-progress", "ended"):
        published = server.publish({"callId": call_id, "userId": email, "status": status,
                                    "data": data})
        assert published.status_code == 200, published.text
        event = client.recv_json()
        assert list(event)[:4] == ["event", "callId", "status", "data"]
        assert set(event) == {"event", "callId", "status", "data", "id", "timestamp"}
        assert event["event"] == "call.status.changed"
        assert (event["callId"], event["status"], event["data"]) == (call_id, status, data)
        assert isinstance(event["id"], str)
        assert event["id"] == published.json()["data"]["id"]
        assert ISO_UTC.fullmatch(event["timestamp"])
        ids.append(event["id"])
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)


def test_events_reach_only_their_owner(server, clients):
    alice, bob = new_user("alice"), new_user("bob")
    alice_client = connect(server, clients, alice)
    bob_client = connect(server, clients, bob)
    for n in range(3):
        published = server.publish({"callId": f"a-{uuid.uuid4().hex}", "userId": alice,
                                    "status": "ringing", "data": {"n": n}})
        assert published.json()["data"]["delivered"] == 1
        assert alice_client.recv_json()["data"] == {"n": n}
    send_test_message(server, alice, "alice only")
    assert alice_client.recv_json()["data"]["message"] == "alice only"
    # bob's first message is his own: he saw none of alice's.
    mine = send_test_message(server, bob, "bob's")
    assert bob_client.recv_json() == mine["data"]


def test_three_tabs_each_get_every_event_once(server, clients):
    email = new_user()
    tabs = [connect(server, clients, email) for _ in range(3)]
    call_id = f"call-{uuid.uuid4().hex}"
    ids = []
    for status in ("initiated", "ringing", "in-progress"):
        published = server.publish({"callId": call_id, "userId": email, "status": status})
        assert published.json()["data"]["delivered"] == 3
        ids.append(published.json()["data"]["id"])
    sentinel = send_test_message(server, email, "end of test")
    assert sentinel["delivered"] == 3
    for tab in tabs:
        received = [tab.recv_json() for _ in range(4)]
        assert [e.get("id") for e in received[:3]] == ids
        assert received[3] == sentinel["data"]


def test_ws_alias(server, clients):
    email = new_user()
    client = connect(server, clients, email, path="/ws")
    assert_still_open(client)
    message = send_test_message(server, email, "via /ws")
    assert client.recv_json() == message["data"]
    client.send_raw("nope")
    assert client.recv_json() == INVALID_FORMAT


def test_plain_get_of_root_is_the_demo_page(server):
    response = requests.get(server.http + "/", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")


def test_permessage_deflate_is_not_accepted(server):
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
    raw = RawWebSocket(server.port, headers=(offer,))
    try:
        assert raw.status == 101
        assert "sec-websocket-extensions" not in raw.headers
        # And frames arrive uncompressed (RSV1 clear): the init answer is plain text.
        email = new_user()
        raw.send_json({"type": "init", "payload": {"token": emulator_token(email)}})
        opcode, payload = raw.read_frame()
        assert opcode == OP_TEXT
        assert payload.startswith(b'{"type":"connected"')
    finally:
        raw.close()
    # websocket-client, which offers it like a browser, also gets no extension.
    client = Client(server.ws)
    try:
        assert "sec-websocket-extensions" not in {k.lower() for k in client.ws.getheaders()}
    finally:
        client.close()


# -- disconnects --------------------------------------------------------------------------


def clients_count(server, email: str) -> int:
    response = requests.get(
        f"{server.http}/api/v6/call/websocket/clients",
        headers={"Authorization": f"Bearer {emulator_token(email)}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]["totalConnections"]


def wait_for_count(server, email: str, expected: int, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while clients_count(server, email) != expected:
        assert time.monotonic() - started < timeout, f"{email} never had {expected} connections"
        time.sleep(0.05)
    return time.monotonic() - started


def test_abrupt_disconnects_are_cleaned_up(server, clients):
    email = new_user()
    survivor = connect(server, clients, email)
    dropped = []
    for _ in range(3):
        raw = RawWebSocket(server.port)
        raw.send_json({"type": "init", "payload": {"token": emulator_token(email)}})
        assert raw.read_frame()[0] == OP_TEXT
        dropped.append(raw)
    wait_for_count(server, email, 4)
    dropped[0].kill()  # reset, no close frame
    dropped[1].close()  # FIN, no close frame
    dropped[2].sock.shutdown(2)
    dropped[2].close()
    elapsed = wait_for_count(server, email, 1)
    assert elapsed < 3
    # The server goes on serving the user's remaining connection and new ones.
    message = send_test_message(server, email, "still here")
    assert message["delivered"] == 1
    assert survivor.recv_json() == message["data"]
    assert_connected(clients(server.ws).init(email, token=emulator_token(email)), email)


def test_a_client_that_leaves_mid_handshake_does_not_hurt(server, clients):
    import socket

    with socket.create_connection(("127.0.0.1", server.port)) as half:
        half.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
    raw = RawWebSocket(server.port)
    try:
        raw.send_frame(OP_CLOSE, (1000).to_bytes(2, "big"))
        frames = raw.read_until_gone(5)
    finally:
        raw.close()
    assert frames and frames[-1][0] == OP_CLOSE and close_code(frames[-1][1]) == 1000
    email = new_user()
    assert_connected(clients(server.ws).init(email, token=emulator_token(email)), email)


def test_closed_client_gets_connection_closed(server, clients):
    client = clients(server.ws)
    client.send_json({"type": "init", "payload": {"token": "garbage"}})
    with pytest.raises((ConnectionClosedError, websocket.WebSocketConnectionClosedException)):
        for _ in range(3):
            client.recv_json(timeout=5)


def test_the_21st_connection_of_a_user_is_refused_by_default(server, clients):
    email = new_user()
    twenty = [connect(server, clients, email) for _ in range(20)]
    extra = clients(server.ws)
    extra.send_json({"type": "init", "payload": {"token": emulator_token(email)}})
    assert_error_then_close(extra, 1008, "too many connections")
    message = send_test_message(server, email, "all twenty")
    assert message["delivered"] == 20
    for client in twenty:
        assert client.recv_json() == message["data"]


def test_test_messages_are_live_only(server, clients):
    email = new_user()
    first = connect(server, clients, email)
    message = send_test_message(server, email, "now or never")
    assert "id" not in message["data"]
    assert first.recv_json() == message["data"]
    # A later connection is not given it: no history, no snapshot of test messages.
    later = connect(server, clients, email)
    sentinel = send_test_message(server, email, "sentinel")
    assert later.recv_json() == sentinel["data"]
    assert first.recv_json() == sentinel["data"]
