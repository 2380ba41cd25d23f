"""REST error shapes, OpenAPI and offline Swagger UI, through Flask's test client.

Every error is ``{"success": false, "message": ...}`` with the right status
(docs/protocol.md §10), and no malformed request gets a 500.
"""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.support.tokens import emulator_token
from webapp import create_app

API_KEY = "unit-events-key"
TEST_URL = "/api/v6/call/websocket/test"
CLIENTS_URL = "/api/v6/call/websocket/clients"
EVENTS_URL = "/api/v6/call/events"

BASE = {
    "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
    "EVENTS_API_KEY": API_KEY,
    "ADMIN_EMAILS": "admin@example.com",
}


@pytest.fixture(scope="module")
def app() -> Flask:
    return create_app(BASE)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def disabled_app() -> Flask:
    return create_app({**BASE, "EVENTS_API_KEY": ""})


def bearer(email: str = "alice@example.com", **claims) -> dict[str, str]:
    return {"Authorization": f"Bearer {emulator_token(email, **claims)}"}


def assert_error(response, status: int) -> str:
    """Check the one error shape and return its message."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["success"] is False
    assert isinstance(body["message"], str) and body["message"].strip()
    assert set(body) == {"success", "message"}
    return body["message"]


# -- authentication ------------------------------------------------------------------


@pytest.mark.parametrize("method,url", [("post", TEST_URL), ("get", CLIENTS_URL)])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer    "},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"Authorization": "Token abc"},
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Bearer a.b.c"},
        {"Authorization": "Bearer " + emulator_token("alice@example.com", ttl=-1)},
        {"Authorization": "Bearer " + emulator_token(None)},
        {"Authorization": "Bearer " + emulator_token("alice@example.com", project="other")},
    ],
)
def test_missing_or_invalid_bearer_is_401(client, method, url, headers):
    # A body the endpoint would refuse: authentication is checked first.
    response = getattr(client, method)(url, headers=headers)
    assert_error(response, 401)
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")


def test_401_before_body_validation(client):
    for body in (None, {"targetUserId": 5}, ["x"], "text"):
        assert_error(client.post(TEST_URL, json=body), 401)
    assert_error(client.post(TEST_URL, data="{not json", content_type="application/json"), 401)


def test_expired_token_message_says_expired(client):
    message = assert_error(
        client.get(CLIENTS_URL, headers=bearer(ttl=-1)), 401
    )
    assert "expired" in message


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": ""}, {"X-API-Key": "wrong"},
                                     {"X-API-Key": API_KEY + "x"}, {"x-api-key": API_KEY[:-1]},
                                     {"Authorization": f"Bearer {API_KEY}"}])
def test_missing_or_wrong_api_key_is_401(client, headers):
    body = {"callId": "c1", "userId": "alice@example.com", "status": "ringing"}
    assert_error(client.post(EVENTS_URL, json=body, headers=headers), 401)


def test_publish_endpoint_is_404_when_disabled(disabled_app):
    response = disabled_app.test_client().post(
        EVENTS_URL,
        json={"callId": "c1", "userId": "alice@example.com", "status": "ringing"},
        headers={"X-API-Key": API_KEY},
    )
    assert "EVENTS_API_KEY" in assert_error(response, 404)


# -- malformed requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": "{not json", "content_type": "application/json"},
        {"data": "", "content_type": "application/json"},
        {"json": None},
        {"json": "a string"},
        {"json": 42},
        {"json": ["targetUserId"]},
        {"json": {}},
        {"json": {"targetUserId": 5}},
        {"json": {"targetUserId": None}},
        {"json": {"targetUserId": ""}},
        {"json": {"targetUserId": "   "}},
        {"json": {"targetUserId": ["a@b.c"]}},
        {"json": {"targetUserId": "bob@example.com", "event": 7}},
        {"json": {"targetUserId": "bob@example.com", "event": ""}},
        {"data": b"\xff\xfe\x00garbage", "content_type": "application/json"},
        {"data": "targetUserId=bob@example.com",
         "content_type": "application/x-www-form-urlencoded"},
    ],
)
def test_bad_test_message_bodies_are_400(client, kwargs):
    assert_error(client.post(TEST_URL, headers=bearer(), **kwargs), 400)


def test_validation_message_names_the_field(client):
    message = assert_error(client.post(TEST_URL, headers=bearer(), json={"targetUserId": 5}), 400)
    assert "targetUserId" in message


@pytest.mark.parametrize(
    "body",
    [
        {"callId": "c1", "userId": "alice@example.com", "status": "busy"},
        {"callId": "c1", "userId": "alice@example.com", "status": "completed"},
        {"callId": "c1", "userId": "alice@example.com", "status": "RINGING"},
        {"callId": "c1", "userId": "alice@example.com", "status": ""},
        {"callId": "c1", "userId": "alice@example.com", "status": None},
        {"callId": "c1", "userId": "alice@example.com", "status": 1},
        {"callId": "c1", "userId": "alice@example.com"},
        {"userId": "alice@example.com", "status": "ringing"},
        {"callId": 5, "userId": "alice@example.com", "status": "ringing"},
        {"callId": "", "userId": "alice@example.com", "status": "ringing"},
        {"callId": "c1", "userId": 5, "status": "ringing"},
        {"callId": "c1", "userId": "alice@example.com", "status": "ringing", "data": [1]},
        {"callId": "c1", "userId": "alice@example.com", "status": "ringing", "data": "x"},
        "just a string",
        42,
        [],
    ],
)
def test_bad_events_are_400(client, body):
    response = client.post(EVENTS_URL, json=body, headers={"X-API-Key": API_KEY})
    assert_error(response, 400)


def test_status_outside_the_five_names_them(client):
    response = client.post(
        EVENTS_URL,
        json={"callId": "c1", "userId": "alice@example.com", "status": "busy"},
        headers={"X-API-Key": API_KEY},
    )
    message = assert_error(response, 400)
    assert "status" in message


def test_non_json_event_body_is_400(client):
    for kwargs in ({"data": "{bad", "content_type": "application/json"},
                   {"data": "callId=c1", "content_type": "application/x-www-form-urlencoded"},
                   {"data": ""}):
        assert_error(client.post(EVENTS_URL, headers={"X-API-Key": API_KEY}, **kwargs), 400)


def test_oversized_body_is_413(client):
    response = client.post(
        EVENTS_URL, data=b"[" + b" " * (9 * 1024 * 1024) + b"]",
        content_type="application/json", headers={"X-API-Key": API_KEY},
    )
    assert_error(response, 413)


def test_unknown_route_is_404(client):
    for url in ("/nope", "/api/v6/call/websocket", "/api/v6/call/websocket/test/extra",
                "/api/v5/call/websocket/test"):
        assert_error(client.get(url), 404)
        assert_error(client.post(url, json={}), 404)


@pytest.mark.parametrize(
    "method,url",
    [("get", TEST_URL), ("put", TEST_URL), ("delete", TEST_URL), ("post", CLIENTS_URL),
     ("delete", CLIENTS_URL), ("get", EVENTS_URL), ("patch", EVENTS_URL), ("post", "/healthz"),
     ("post", "/openapi.json")],
)
def test_wrong_method_is_405(client, method, url):
    assert_error(getattr(client, method)(url, headers=bearer()), 405)


FUZZ_BODIES = [
    {"data": b"\x00" * 64, "content_type": "application/octet-stream"},
    {"data": "[" * 5000, "content_type": "application/json"},
    {"data": '{"a":' * 2000, "content_type": "application/json"},
    {"data": "1e999999", "content_type": "application/json"},
    {"data": '"\\ud800"', "content_type": "application/json"},
    {"data": "NaN", "content_type": "application/json"},
    {"json": {"targetUserId": "x" * 10_000}},
    {"json": {"callId": "c" * 10_000, "userId": "u@x.y", "status": "ringing"}},
    {"json": [{"callId": "c", "userId": "u@x.y", "status": "ringing"}] * 501},
    {"json": [None, 1, "x", [], {}]},
    {"json": {"targetUserId": "bob@example.com", "message": {"nested": [1, {"deep": None}]}}},
    {"data": "a=1&b=2", "content_type": "multipart/form-data; boundary=zzz"},
]


@pytest.mark.parametrize("kwargs", FUZZ_BODIES)
@pytest.mark.parametrize("url", [TEST_URL, EVENTS_URL, CLIENTS_URL, "/"])
def test_no_malformed_request_gets_a_500(client, url, kwargs):
    headers = {**bearer(), "X-API-Key": API_KEY}
    response = client.post(url, headers=headers, **kwargs)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert_error(response, response.status_code)


def test_garbage_headers_do_not_500(client):
    for headers in (
        {"Authorization": "Bearer " + "é" * 100},
        {"Authorization": "Bearer " + "x" * 50_000},
        {"Authorization": "bearer " + "a.b.c." * 100},
        {"X-API-Key": "é"},
    ):
        response = client.get(CLIENTS_URL, headers=headers)
        assert response.status_code == 401
        response = client.post(EVENTS_URL, json={}, headers=headers)
        assert response.status_code in (400, 401)


# -- successful answers without sockets ---------------------------------------------------


def test_test_message_answer_is_the_seed_body_plus_delivered(client):
    response = client.post(
        TEST_URL,
        json={"targetUserId": "Nobody@Example.com", "message": "Hello from WebSocket!",
              "event": "test.event"},
        headers=bearer("Sender@Example.com"),
    )
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["success", "message", "data", "delivered"]
    assert body["success"] is True
    assert body["message"] == "WebSocket message sent successfully"
    assert body["delivered"] == 0
    data = body["data"]
    assert list(data) == ["event", "callId", "status", "data"]
    assert data["event"] == "test.event"
    assert data["callId"] == "test_call"
    assert data["status"] == "test"
    assert list(data["data"]) == ["message", "timestamp", "sender"]
    assert data["data"]["message"] == "Hello from WebSocket!"
    assert data["data"]["sender"] == "sender@example.com"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["data"]["timestamp"])


def test_clients_answer_keeps_the_seed_keys(client):
    body = client.get(CLIENTS_URL, headers=bearer()).get_json()
    assert body["success"] is True
    assert isinstance(body["message"], str) and body["message"]
    assert body["data"]["totalConnections"] == 0
    assert body["data"]["users"] == []


def test_health_endpoints(client):
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["success"] is True
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.mimetype == "text/plain"
    assert metrics.headers["Content-Type"].count("charset") == 1
    text = metrics.get_data(as_text=True)
    for name in ("callwire_connections", "callwire_events_in_total",
                 "callwire_events_delivered_total", "callwire_delivery_latency_seconds",
                 "callwire_slow_clients_dropped_total"):
        assert f"# TYPE {name.removesuffix('_total')}" in text


# -- OpenAPI and offline Swagger UI ------------------------------------------------------


def test_openapi_declares_both_security_schemes(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http"
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["apiKeyAuth"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    paths = spec["paths"]
    assert paths[TEST_URL]["post"]["security"] == [{"bearerAuth": []}]
    assert paths[CLIENTS_URL]["get"]["security"] == [{"bearerAuth": []}]
    assert paths[EVENTS_URL]["post"]["security"] == [{"apiKeyAuth": []}]
    # The documented validation status is the one the API answers.
    assert "400" in paths[TEST_URL]["post"]["responses"]
    assert "422" not in paths[TEST_URL]["post"]["responses"]
    assert "401" in paths[TEST_URL]["post"]["responses"]


def test_the_publish_endpoint_keeps_every_documented_answer(client):
    """Its decorators are applied for their documentation only (``doc_only``): none is lost."""
    publish = client.get("/openapi.json").get_json()["paths"][EVENTS_URL]["post"]
    assert sorted(publish["responses"]) == [
        "200", "400", "401", "408", "409", "413", "503", "default"]
    assert publish["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PublishAnswer"}
    assert publish["responses"]["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PublishFailure"}
    assert publish["requestBody"]["required"] is True


def test_docs_work_offline(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert not re.search(r"https?://", html), "Swagger UI must not load anything remote"
    assert "//cdn" not in html
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    assert any(a.endswith("swagger-ui.css") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.get_data()) > 1000, asset
        served.close()
    assert "/openapi.json" in html
