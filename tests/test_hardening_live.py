"""Resource and identity limits against the real server (issue 11, resource half).

Unverified emails, tokens from the future, the production start-up line,
byte-bounded send queues, test message size, body deadlines and sizes, and
admission caps at the handshake.
"""

from __future__ import annotations

import time
import uuid

import requests

from tests.support.server import LiveServer
from tests.support.tokens import emulator_token


def new_user(name: str = "user") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}@example.com"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def clients_answer(server: LiveServer, token: str) -> requests.Response:
    return requests.get(f"{server.http}/api/v6/call/websocket/clients",
                        headers=bearer(token), timeout=5)


# -- identity: the email is the identity ------------------------------------------------------


def test_unverified_email_is_refused_on_sockets_and_rest(server, clients):
    email = new_user()
    unverified = emulator_token(email, email_verified=False)
    client = clients(server.ws)
    answer = client.init(token=unverified)
    assert answer == {"type": "error",
                      "message": "Authentication failed: email address not verified"}
    assert client.wait_closed()[0] == 1008
    refused = clients_answer(server, unverified)
    assert refused.status_code == 401
    assert "not verified" in refused.json()["message"]
    # The same user with a verified email is served.
    assert clients(server.ws).init(token=emulator_token(email))["type"] == "connected"
    assert clients_answer(server, emulator_token(email)).status_code == 200


def test_unverified_emails_are_accepted_when_allowed(server_factory, clients):
    live = server_factory({"ALLOW_UNVERIFIED_EMAILS": "true"}, name="unverified")
    email = new_user()
    unverified = emulator_token(email, email_verified=False)
    assert clients(live.ws).init(token=unverified)["type"] == "connected"
    assert clients_answer(live, unverified).status_code == 200
    assert "ALLOW_UNVERIFIED_EMAILS=true" in live.log()


def test_a_token_from_the_future_is_refused_in_development(server, clients):
    email = new_user()
    early = emulator_token(email, iat=int(time.time()) + 120)
    client = clients(server.ws)
    answer = client.init(token=early)
    assert answer["type"] == "error"
    assert "future" in answer["message"]
    assert client.wait_closed()[0] == 1008
    assert clients_answer(server, early).status_code == 401

