"""The seed's REST endpoints and the operational ones, against the real server.

Contract: docs/protocol.md §10.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.support.server import LiveServer, start_server
from tests.support.tokens import emulator_token

ADMIN = "admin@example.com"
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    server = start_server({"ADMIN_EMAILS": f"Root@Example.com, {ADMIN.upper()}"}, name="rest")
    yield server
    server.stop()


def new_user(name: str = "user") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}@example.com"


def auth(email: str, **claims) -> dict[str, str]:
    return {"Authorization": f"Bearer {emulator_token(email, **claims)}"}


def connect(live: LiveServer, clients, email: str):
    client = clients(live.ws)
    assert client.init(email, token=emulator_token(email))["type"] == "connected"
    return client


def post_test(live: LiveServer, body: object, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"{live.http}/api/v6/call/websocket/test", json=body,
                         headers=headers, timeout=5)


def get_clients(live: LiveServer, email: str) -> dict:
    response = requests.get(f"{live.http}/api/v6/call/websocket/clients",
                            headers=auth(email), timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def test_test_message_is_the_seed_exchange(live, clients):
    target, sender = new_user("target"), new_user("Sender")
    tabs = [connect(live, clients, target) for _ in range(2)]
    response = post_test(
        live,
        {"targetUserId": target, "message": "Hello from WebSocket!", "event": "test.event"},
        auth(sender.upper()),
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["success", "message", "data", "delivered"]
    assert body["success"] is True
    assert body["message"] == "WebSocket message sent successfully"
    assert body["delivered"] == 2
    data = body["data"]
    assert list(data) == ["event", "callId", "status", "data"]
    assert (data["event"], data["callId"], data["status"]) == ("test.event", "test_call", "test")
    assert list(data["data"]) == ["message", "timestamp", "sender"]
    assert data["data"]["message"] == "Hello from WebSocket!"
    assert data["data"]["sender"] == sender.lower()  # the verified token's email, normalised
    assert ISO_UTC.fullmatch(data["data"]["timestamp"])
    # Each socket receives exactly the seed's data object: no id, nothing added.
    for tab in tabs:
        assert tab.recv_json() == data


def test_test_message_event_name_and_target_case(live, clients):
    target = new_user("target")
    tab = connect(live, clients, target)
    response = post_test(live, {"targetUserId": f"  {target.upper()} ", "message": {"k": [1]},
                                "event": "custom.thing"}, auth(new_user()))
    assert response.status_code == 200
    body = response.json()
    assert body["delivered"] == 1
    assert body["data"]["event"] == "custom.thing"
    assert body["data"]["data"]["message"] == {"k": [1]}
    assert tab.recv_json() == body["data"]


def test_test_message_to_nobody_is_still_sent(live):
    response = post_test(live, {"targetUserId": new_user("absent"), "message": "x",
                                "event": "test.event"}, auth(new_user()))
    assert response.status_code == 200
    assert response.json()["message"] == "WebSocket message sent successfully"
    assert response.json()["delivered"] == 0


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"},
     {"Authorization": "Bearer " + emulator_token("a@example.com", ttl=-1)}],
)
def test_401_without_a_valid_bearer(live, headers):
    for response in (
        post_test(live, {"targetUserId": "x@example.com", "message": "m"}, headers),
        requests.post(f"{live.http}/api/v6/call/websocket/test", headers=headers, timeout=5),
        requests.get(f"{live.http}/api/v6/call/websocket/clients", headers=headers, timeout=5),
    ):
        assert response.status_code == 401
        body = response.json()
        assert body["success"] is False and body["message"]


def test_400_for_a_bad_body_with_a_good_token(live):
    response = requests.post(f"{live.http}/api/v6/call/websocket/test", data="{oops",
                             headers={**auth(new_user()), "Content-Type": "application/json"},
                             timeout=5)
    assert response.status_code == 400
    assert response.json()["success"] is False


def test_clients_lists_own_connections_for_users_and_everyone_for_admins(live, clients):
    alice, bob = new_user("alice"), new_user("bob")
    for _ in range(2):
        connect(live, clients, alice)
    connect(live, clients, bob)

    mine = get_clients(live, alice)
    assert mine["success"] is True
    assert isinstance(mine["message"], str) and mine["message"]
    data = mine["data"]
    assert data["totalConnections"] == 2
    assert [u["userId"] for u in data["users"]] == [alice]
    (entry,) = data["users"]
    assert entry["connectionCount"] == 2
    assert len(entry["connections"]) == 2
    for connection in entry["connections"]:
        assert ISO_UTC.fullmatch(connection["connectedAt"])
        assert connection["id"]

    for admin in (ADMIN, "root@example.com"):
        everyone = get_clients(live, admin)["data"]
        users = {u["userId"]: u for u in everyone["users"]}
        assert users[alice]["connectionCount"] == 2
        assert users[bob]["connectionCount"] == 1
        assert everyone["totalConnections"] >= 3
        assert everyone["totalUsers"] >= 2
        assert everyone["totalConnections"] == sum(u["connectionCount"] for u in users.values())

    nobody = get_clients(live, new_user("carol"))["data"]
    assert nobody["totalConnections"] == 0
    assert nobody["users"] == []


def test_health_readiness_and_metrics(live, clients):
    assert requests.get(f"{live.http}/healthz", timeout=5).status_code == 200
    ready = requests.get(f"{live.http}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["success"] is True

    email = new_user()
    tabs = [connect(live, clients, email) for _ in range(2)]
    published = live.publish({"callId": f"m-{uuid.uuid4().hex}", "userId": email,
                              "status": "ringing"})
    assert published.status_code == 200
    for tab in tabs:
        tab.recv_json()
    metrics = requests.get(f"{live.http}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.text
    connections = re.search(
        r'^callwire_connections\{transport="websocket"\} (\S+)$', text, re.MULTILINE
    )
    assert connections and float(connections[1]) >= 2
    assert re.search(r'^callwire_events_in_total\{outcome="accepted",source="api"\} [1-9]', text,
                     re.MULTILINE) or re.search(
        r'^callwire_events_in_total\{source="api",outcome="accepted"\} [1-9]', text, re.MULTILINE)
    delivered = re.search(r"^callwire_events_delivered_total (\S+)$", text, re.MULTILINE)
    assert delivered and float(delivered.group(1)) >= 2
    assert "callwire_delivery_latency_seconds_bucket" in text
    assert "callwire_slow_clients_dropped_total" in text


def test_docs_and_openapi_served_offline(live):
    html = requests.get(f"{live.http}/docs", timeout=5)
    assert html.status_code == 200
    assert not re.search(r"https?://", html.text)
    assets = re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", html.text)
    assert len(assets) >= 3
    for asset in assets:
        served = requests.get(f"{live.http}{asset}", timeout=5)
        assert served.status_code == 200, asset
    spec = requests.get(f"{live.http}/openapi.json", timeout=5).json()
    assert set(spec["components"]["securitySchemes"]) >= {"bearerAuth", "apiKeyAuth"}


def test_unknown_route_and_wrong_method_answer_json(live):
    missing = requests.get(f"{live.http}/api/v6/nothing", timeout=5)
    assert missing.status_code == 404
    assert missing.json()["success"] is False
    wrong = requests.get(f"{live.http}/api/v6/call/websocket/test", headers=auth(new_user()),
                         timeout=5)
    assert wrong.status_code == 405
    assert wrong.json()["success"] is False


def test_publish_needs_the_api_key(live):
    body = {"callId": "k-1", "userId": new_user(), "status": "ringing"}
    assert live.publish(body, key="wrong").status_code == 401
    assert live.publish(body, key="").status_code == 401
    assert live.publish(body).status_code == 200
