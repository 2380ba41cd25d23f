"""Hostile input against the real server (issue 11): refused, nothing stored, strict JSON out.

Each test sends what a hostile or buggy client sends, the way it sends it
(raw bytes on HTTP, text frames on a real WebSocket), and checks the answer,
that nothing was stored (status 404, a retry is no "duplicate", no event on the
owner's socket) and that the owner's sockets keep working. What must not be
stored, or must be delivered, is checked with the in-process broker and the
Redis broker.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.support.server import LiveServer, start_server
from tests.support.tokens import emulator_token
from tests.test_webhook_twilio import TOKEN as TWILIO_TOKEN
from tests.test_webhook_twilio import twilio_signature

VAPI_SECRET = "vapi-input-secret"
EVENTS = "/api/v6/call/events"
TEST_MESSAGE = "/api/v6/call/websocket/test"


def _no_constants(name: str) -> Any:
    raise ValueError(f"not strict JSON: {name}")


def strict_json(response: requests.Response) -> Any:
    """Parse an answer as a strict parser would: UTF-8, no NaN or Infinity."""
    return json.loads(response.content.decode("utf-8"), parse_constant=_no_constants)


def new_user() -> str:
    return f"input-{uuid.uuid4().hex[:10]}@example.com"


def new_call() -> str:
    return f"call-{uuid.uuid4().hex[:12]}"


def bearer(email: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {emulator_token(email)}"}


def _start(name: str, overrides: dict[str, str] | None = None) -> LiveServer:
    settings = {"VAPI_WEBHOOK_SECRET": VAPI_SECRET, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN}
    return start_server({**settings, **(overrides or {})}, name=name)


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """The in-process broker: for refusals that happen before any broker is involved."""
    server = _start("input-memory")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_live(redis_server) -> Iterator[LiveServer]:
    server = _start("input-redis", {"REDIS_URL": redis_server.url})
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> LiveServer:
    """Each broker in turn: for what must (not) be stored and delivered."""
    return request.getfixturevalue("live" if request.param == "memory" else "redis_live")


def post_raw(live: LiveServer, path: str, body: str, headers: dict[str, str] | None = None
             ) -> requests.Response:
    sent = {"X-API-Key": live.api_key, "Content-Type": "application/json", **(headers or {})}
    return requests.post(f"{live.http}{path}", data=body.encode("utf-8"), headers=sent, timeout=10)


def call_status(live: LiveServer, call_id: str, owner: str) -> requests.Response:
    return requests.get(f"{live.http}/api/v6/call/{quote(call_id, safe='')}/status",
                        headers=bearer(owner), timeout=5)


def connect(live: LiveServer, clients, user: str):
    client = clients(live.ws)
    assert client.init(token=emulator_token(user))["type"] == "connected"
    return client


def assert_still_serving(client, live: LiveServer, user: str) -> None:
    """The owner's socket is open and receives the next good event."""
    client.send_json({"type": "ping"})
    assert client.recv_json(timeout=5) == {"type": "pong"}
    call_id = new_call()
    answer = live.publish({"callId": call_id, "userId": user, "status": "ringing"})
    assert answer.status_code == 200, answer.text
    event = client.recv_until(lambda m: m.get("callId") == call_id)
    assert event["status"] == "ringing"


def event_body(call_id: str, user: str, data: str) -> str:
    return f'{{"callId":"{call_id}","userId":"{user}","status":"ringing","data":{data}}}'


# -- publish: refused with 400, nothing stored ----------------------------------------------

DEEP = "[" * 900 + "]" * 900  # parses, but encoding it again may overflow the stack

REFUSED_DATA = [
    pytest.param('{"note":"\\ud800"}', "valid Unicode", id="lone-surrogate"),
    pytest.param('{"\\udfff":1}', "valid Unicode", id="lone-surrogate-key"),
    pytest.param('{"x":NaN}', "finite", id="nan"),
    pytest.param('{"x":-Infinity}', "finite", id="infinity"),
    pytest.param('{"x":1e400}', "finite", id="1e400"),
    pytest.param('{"x":' + "[" * 32 + "]" * 32 + "}", "nested more than 32", id="depth-33"),
    pytest.param('{"x":' + DEEP + "}", "nested more than 32", id="depth-901"),
    pytest.param('{"x":"' + "a" * 70_000 + '"}', "at most 65536 bytes", id="too-large"),
]


@pytest.mark.parametrize(("data", "reason"), REFUSED_DATA)
def test_a_refused_publish_is_a_400_and_stores_nothing(store, clients, data, reason):
    user, call_id = new_user(), new_call()
    owner = connect(store, clients, user)
    answer = post_raw(store, EVENTS, event_body(call_id, user, data))
    assert answer.status_code == 400, answer.text
    assert reason in strict_json(answer)["message"]
    # Nothing stored: the call is unknown, a retry is not a "duplicate", the owner
    # still has a working socket and no event arrived on it.
    assert call_status(store, call_id, user).status_code == 404
    again = post_raw(store, EVENTS, event_body(call_id, user, "{}"))
    assert again.status_code == 200 and strict_json(again)["data"]["id"] is not None
    first = owner.recv_json(timeout=5)
    assert (first["callId"], first["data"]) == (call_id, {})
    assert_still_serving(owner, store, user)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("callId", "a/b", "must be free of"),
        ("callId", "a\\\\b", "must be free of"),
        ("callId", "..", "must be free of"),
        ("callId", "tab\\there", "must be free of"),
        ("callId", "\\ud800", "valid Unicode"),
        ("userId", "\\udc00@example.com", "valid Unicode"),
        ("idempotencyKey", "\\ud800", "valid Unicode"),
    ],
)
def test_ids_are_checked_the_same_way(live, field, value, reason):
    body = {"callId": new_call(), "userId": new_user(), "status": "ringing"}
    text = json.dumps(body)[:-1] + f', "{field}": "{value}"}}'
    answer = post_raw(live, EVENTS, text)
    assert answer.status_code == 400, answer.text
    assert reason in strict_json(answer)["message"]


def test_a_batch_refuses_the_bad_item_alone(store):
    user, good, bad = new_user(), new_call(), new_call()
    text = "[" + event_body(good, user, "{}") + "," + event_body(bad, user, '{"x":NaN}') + "]"
    answer = post_raw(store, EVENTS, text)
    assert answer.status_code == 200, answer.text
    results = strict_json(answer)["data"]
    assert [r["code"] for r in results] == [200, 400]
    assert "finite" in results[1]["message"]
    assert call_status(store, good, user).status_code == 200
    assert call_status(store, bad, user).status_code == 404


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:04:00+02:00", "9999-12-31T23:59:00-02:00"])
def test_a_timestamp_outside_the_calendar_is_a_400(live, timestamp):
    call_id = new_call()
    answer = live.publish({"callId": call_id, "userId": new_user(), "status": "ringing",
                           "timestamp": timestamp})
    assert answer.status_code == 400, answer.text
    assert "timestamp" in strict_json(answer)["message"]


def test_a_call_id_with_reserved_url_characters_can_be_read_back(store):
    user = new_user()
    call_id = f"odd?#%;:@+&={uuid.uuid4().hex[:6]}é"
    answer = store.publish({"callId": call_id, "userId": user, "status": "ringing"})
    assert answer.status_code == 200, answer.text
    answer = call_status(store, call_id, user)
    assert answer.status_code == 200, answer.text
    assert strict_json(answer)["data"]["callId"] == call_id


def test_idempotency_keys_of_two_users_never_collide(store, clients):
    alice, bob = new_user(), new_user()
    bob_socket = connect(store, clients, bob)
    key = f"key-{uuid.uuid4().hex}"
    first = store.publish({"callId": new_call(), "userId": alice, "status": "ringing",
                          "idempotencyKey": key})
    bob_call = new_call()
    second = store.publish({"callId": bob_call, "userId": bob, "status": "ringing",
                           "idempotencyKey": key})
    assert first.status_code == second.status_code == 200
    assert second.json()["data"]["id"] != first.json()["data"]["id"]
    event = bob_socket.recv_json(timeout=5)
    assert (event["callId"], event["id"]) == (bob_call, second.json()["data"]["id"])


# -- test messages ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ('"\\ud800"', "valid Unicode"),
        ("1e400", "finite"),
        ("NaN", "finite"),
        ("1" * 5000, "Invalid JSON body"),  # Python reads at most 4,300 digits: was a 500
        ("[" * 40 + "]" * 40, "nested more than 32"),
    ],
)
def test_a_test_message_that_is_not_strict_json_is_a_400(live, clients, message, reason):
    target = new_user()
    socket = connect(live, clients, target)
    answer = post_raw(live, TEST_MESSAGE, f'{{"targetUserId":"{target}","message":{message}}}',
                      bearer(new_user()))
    assert answer.status_code == 400, answer.text
    assert reason in strict_json(answer)["message"]
    assert_still_serving(socket, live, target)


def test_odd_but_valid_text_is_delivered_and_answered_as_strict_json(store, clients):
    target = new_user()
    socket = connect(store, clients, target)
    text = "emoji 😀, line sep \u2028, nul \x00, rtl \u202e, bom \ufeff"
    # ASCII with \u escapes: the emoji travels as the surrogate pair \ud83d\ude00.
    body = json.dumps({"targetUserId": target, "message": [text, 10**4000, -0.0, 1e308]})
    answer = post_raw(store, TEST_MESSAGE, body, bearer(new_user()))
    assert answer.status_code == 200, answer.text
    assert strict_json(answer)["data"]["data"]["message"] == [text, 10**4000, -0.0, 1e308]
    frame = socket.ws.recv()  # the raw text frame, before any lenient parsing
    received = json.loads(frame, parse_constant=_no_constants)["data"]["message"]
    assert received == [text, 10**4000, -0.0, 1e308]


# -- webhooks: the same rules, in the same place ----------------------------------------------


def vapi_status(call_id: str, user: str, **extra: Any) -> dict[str, Any]:
    return {"message": {"type": "status-update", "status": "ringing", **extra,
                        "call": {"id": call_id, "metadata": {"userId": user}}}}


@pytest.mark.parametrize(
    ("call_id", "extra"),
    [
        pytest.param("vapi/slash", {}, id="slash-in-call-id"),
        pytest.param("v" * 100_000, {}, id="long-call-id"),
        pytest.param(None, {"endedReason": "x" * 100_000}, id="long-field"),
    ],
)
def test_vapi_events_breaking_the_rules_are_refused_not_stored(store, call_id, extra):
    user, call_id = new_user(), call_id or new_call()
    answer = requests.post(f"{store.http}/api/v6/call/webhook/vapi",
                           json=vapi_status(call_id, user, **extra),
                           headers={"X-Vapi-Secret": VAPI_SECRET}, timeout=10)
    assert answer.status_code == 200, answer.text
    body = strict_json(answer)
    assert body["data"]["ignored"] == "refused" and body["data"]["id"] is None
    assert len(answer.content) < 1000  # the refusal does not echo 100,000 characters
    if "/" not in call_id and len(call_id) < 1000:
        assert call_status(store, call_id, user).status_code == 404


def test_vapi_lone_surrogate_is_refused(live):
    user, call_id = new_user(), new_call()
    body = json.dumps(vapi_status(call_id, user))
    body = body.replace('"ringing"', '"ringing", "x": 1').replace(
        '"type": "status-update"', '"type": "status-update", "endedReason": "\\ud800"')
    answer = requests.post(f"{live.http}/api/v6/call/webhook/vapi", data=body,
                           headers={"X-Vapi-Secret": VAPI_SECRET,
                                    "Content-Type": "application/json"}, timeout=10)
    assert strict_json(answer)["data"]["ignored"] == "refused", answer.text
    assert call_status(live, call_id, user).status_code == 404


@pytest.mark.parametrize("call_sid", ["CA/slash", "C" * 10_000])  # Twilio bodies stop at 64 KiB
def test_twilio_callbacks_breaking_the_rules_are_refused(live, call_sid):
    user = new_user()
    url = f"{live.http}/api/v6/call/webhook/twilio?userId={quote(user, safe='')}"
    params = {"CallSid": call_sid, "CallStatus": "ringing", "SequenceNumber": "1"}
    answer = requests.post(url, data=params, timeout=10, headers={
        "X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, url, params)})
    assert answer.status_code == 200, answer.text
    assert strict_json(answer)["data"]["ignored"] == "refused"


# -- WebSocket frames -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        "[" * 10_000 + "]" * 10_000,
        '{"type":"init","payload":' + "[" * 5_000 + "]" * 5_000 + "}",
        '{"type":"ping","x":NaN}',
        '{"type":"\\ud800"}',
        '{"type":"init","payload":{"userId":"\\udfff@example.com"}}',
        '{"type":"init","payload":{"lastEventId":' + "7" * 5000 + "}}",
    ],
    ids=["array-10000-deep", "payload-5000-deep", "nan", "surrogate-type", "surrogate-user",
         "5000-digit-id"],
)
def test_hostile_frames_get_the_format_error_and_the_socket_stays_open(live, clients, frame):
    client = clients(live.ws)
    client.send_raw(frame)
    assert client.recv_json(timeout=5) == {"type": "error", "message": "Invalid message format"}
    client.send_json({"type": "ping"})
    assert client.recv_json(timeout=5) == {"type": "pong"}
    assert "Traceback" not in live.log()


# -- HTTP -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", EVENTS, {"POST"}),
        ("PUT", TEST_MESSAGE, {"POST"}),
        ("DELETE", "/api/v6/call/websocket/clients", {"GET"}),
        ("POST", "/api/v6/call/some-call/status", {"GET"}),
        ("TRACE", "/api/v6/call/webhook/vapi", {"POST"}),
    ],
)
def test_405_says_which_methods_are_allowed(live, method, path, allowed):
    answer = requests.request(method, f"{live.http}{path}", timeout=5)
    assert answer.status_code == 405
    assert allowed <= {m.strip() for m in answer.headers["Allow"].split(",")}
    assert strict_json(answer)["success"] is False
