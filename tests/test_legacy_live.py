"""Legacy mode (WS_REQUIRE_TOKEN=false) and ALLOWED_ORIGINS, against the real server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests
import websocket

from tests.support.server import LiveServer, start_server
from tests.support.tokens import emulator_token
from tests.support.wsclient import Client

ORIGIN = "https://app.example.com"
SEED_CONNECTED = "Successfully connected to WebSocket server"


@pytest.fixture(scope="module")
def legacy() -> Iterator[LiveServer]:
    server = start_server(
        {"WS_REQUIRE_TOKEN": "false", "ALLOWED_ORIGINS": f"{ORIGIN}/, http://localhost:5173"},
        name="legacy",
    )
    yield server
    server.stop()


def new_user(name: str = "user") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}@example.com"


def open_client(legacy: LiveServer, clients) -> Client:
    return clients(legacy.ws, origin=ORIGIN)


def test_start_up_log_warns_that_legacy_mode_is_insecure(legacy):
    log = legacy.log()
    assert "WS_REQUIRE_TOKEN=false" in log
    assert "insecure" in log.lower()


def test_seed_init_with_user_id_only(legacy, clients):
    email = new_user()
    client = open_client(legacy, clients)
    answer = client.init(f" {email.upper()} ")
    # Exactly the seed's object: no token, so no expiresAt either.
    assert answer == {"type": "connected", "userId": email, "message": SEED_CONNECTED}
    published = legacy.publish({"callId": f"c-{uuid.uuid4().hex}", "userId": email,
                                "status": "ringing", "data": {"type": "status-update"}})
    assert published.status_code == 200
    event = client.recv_json()
    assert (event["event"], event["status"], event["data"]) == (
        "call.status.changed", "ringing", {"type": "status-update"})


@pytest.mark.parametrize("payload", [{}, {"userId": ""}, {"userId": "   "}])
def test_init_without_user_id_is_an_error_and_the_socket_stays_open(legacy, clients, payload):
    client = open_client(legacy, clients)
    client.send_json({"type": "init", "payload": payload})
    answer = client.recv_json()
    assert answer["type"] == "error"
    assert "userid" in answer["message"].lower()
    email = new_user()
    assert client.init(email)["userId"] == email


@pytest.mark.parametrize(
    "make_token",
    [lambda email: "garbage", lambda email: emulator_token(email, ttl=-1),
     lambda email: emulator_token(email, project="other-project"),
     lambda email: emulator_token(new_user("mallory"))],
)
def test_a_token_in_init_is_still_verified(legacy, clients, make_token):
    email = new_user()
    client = open_client(legacy, clients)
    client.send_json({"type": "init", "payload": {"userId": email, "token": make_token(email)}})
    answer = client.recv_json()
    assert answer["type"] == "error"
    assert "authentication failed" in answer["message"].lower()
    assert client.wait_closed(5)[0] == 1008


def test_a_good_token_in_legacy_mode_works(legacy, clients):
    email = new_user()
    client = open_client(legacy, clients)
    answer = client.init(token=emulator_token(email))
    assert answer["userId"] == email
    assert "expiresAt" in answer


def test_allowed_origin_is_accepted(legacy, clients):
    for origin in (ORIGIN, "http://localhost:5173"):
        client = clients(legacy.ws, origin=origin)
        client.send_json({"type": "ping"})
        assert client.recv_json() == {"type": "pong"}


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example.com", "http://app.example.com", "https://app.example.com.evil.io",
     "null"],
)
def test_foreign_origin_is_refused_at_the_handshake(legacy, origin):
    with pytest.raises(websocket.WebSocketBadStatusException) as refusal:
        Client(legacy.ws, origin=origin)
    assert refusal.value.status_code == 403
    # Also on the alias.
    with pytest.raises(websocket.WebSocketBadStatusException):
        Client(legacy.ws + "ws", origin=origin)


def test_origins_do_not_affect_plain_http(legacy):
    response = requests.get(f"{legacy.http}/healthz", headers={"Origin": "https://evil.example"},
                            timeout=5)
    assert response.status_code == 200
