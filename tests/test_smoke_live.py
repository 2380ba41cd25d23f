"""The seed's walk-through against the real server: init, event, exact shapes."""

from __future__ import annotations

from tests.support.tokens import emulator_token


def test_seed_flow_with_token(server, clients):
    client = clients(server.ws)
    token = emulator_token("Alice@Example.com")
    assert client.init("alice@example.com", token=token) == {
        "type": "connected",
        "userId": "alice@example.com",
        "message": "Successfully connected to WebSocket server",
        "expiresAt": client_expiry(token),
    }
    answer = server.publish(
        {"callId": "smoke-1", "userId": "ALICE@example.com", "status": "ringing",
         "data": {"type": "status-update"}}
    )
    assert answer.status_code == 200, answer.text
    event = client.recv_json()
    assert event["event"] == "call.status.changed"
    assert event["id"] == answer.json()["data"]["id"]
    assert {k: event[k] for k in ("callId", "status", "data")} == {
        "callId": "smoke-1", "status": "ringing", "data": {"type": "status-update"},
    }


def client_expiry(token: str) -> str:
    import base64
    import json
    from datetime import UTC, datetime

    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return datetime.fromtimestamp(claims["exp"], tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
