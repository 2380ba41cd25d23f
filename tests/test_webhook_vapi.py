"""Vapi webhook: translation of server messages (pure) and the live endpoint.

The seed's example event is a Vapi status update; the live tests check that
the same message posted by "Vapi" reaches the owner's socket in exactly that
shape, plus ``providerStatus``, ``id`` and ``timestamp``.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from blueprints.webhooks.source import Ignored, provider_time
from blueprints.webhooks.vapi import (
    NotAServerMessage,
    never_connected,
    resolve_owner,
    translate,
)
from tests.fixtures import load, names
from tests.support.redis_server import RedisServer
from tests.support.server import LiveServer, start_server
from tests.support.tokens import emulator_token
from webapp.events import EventDraft

SECRET = "vapi-test-secret-3c1a5b7e"
SEED_CALL = "eb3e23ae-f766-4a0b-a002-3a775cfe4b5c"


def vapi(name: str) -> dict[str, Any]:
    return load(f"vapi/{name}")


# --- translation ------------------------------------------------------------------

EVENT_FIXTURES = [
    # fixture, status, providerStatus, endedReason, data.type
    ("status-update-scheduled", "initiated", "scheduled", None, "status-update"),
    ("status-update-queued", "initiated", "queued", None, "status-update"),
    ("status-update-ringing", "ringing", "ringing", None, "status-update"),
    ("status-update-in-progress", "in-progress", "in-progress", None, "status-update"),
    ("status-update-forwarding", "in-progress", "forwarding", None, "status-update"),
    ("status-update-ended-customer-busy", "ended", "ended", "customer-busy", "status-update"),
    ("status-update-ended-customer-ended-call", "ended", "ended", "customer-ended-call",
     "status-update"),
    ("status-update-ended-twilio-failed-to-connect", "failed", "ended",
     "twilio-failed-to-connect-call", "status-update"),
    ("end-of-call-report", "ended", "ended", "customer-ended-call", "end-of-call-report"),
    ("end-of-call-report-start-error", "failed", "ended",
     "call.start.error-subscription-insufficient-credits", "end-of-call-report"),
]


@pytest.mark.parametrize(("fixture", "status", "provider_status", "reason", "kind"), EVENT_FIXTURES)
def test_event_messages_become_drafts(fixture, status, provider_status, reason, kind):
    body = vapi(fixture)
    call = body["message"]["call"]
    draft = translate(body)
    assert isinstance(draft, EventDraft)
    assert draft.call_id == call["id"]
    assert draft.status == status
    assert draft.data == {
        "type": kind,
        "assistantId": call["assistantId"],
        "customerNumber": call["customer"]["number"],
        "endedReason": reason,
        "providerStatus": provider_status,
    }
    assert list(draft.data) == ["type", "assistantId", "customerNumber", "endedReason",
                                "providerStatus"]
    assert draft.user_id == "alice@example.com"
    assert draft.sequence is None


def test_seed_example_translates_to_the_seed_event():
    draft = translate(vapi("status-update-ended-customer-busy"))
    assert (draft.call_id, draft.status) == (SEED_CALL, "ended")
    assert draft.data == {
        "type": "status-update",
        "assistantId": "7ac6d8a8-bf4d-45bc-bd92-41d36be986e1",
        "customerNumber": "+919351044614",
        "endedReason": "customer-busy",
        "providerStatus": "ended",
    }
    assert draft.timestamp == "2025-01-26T18:41:38.130Z"


IGNORED_FIXTURES = [n for n in names("vapi", "ignored-") if "unknown-status" not in n]


def test_fixtures_cover_the_ignored_types_we_promise():
    kinds = {vapi(n)["message"]["type"] for n in IGNORED_FIXTURES}
    assert {"assistant-request", "tool-calls", "transcript", "speech-update", "hang",
            "conversation-update", "function-call", "model-output", "user-interrupted",
            "phone-call-control", "voice-input"} <= kinds


@pytest.mark.parametrize("fixture", IGNORED_FIXTURES)
def test_other_message_types_are_ignored(fixture):
    verdict = translate(vapi(fixture))
    assert isinstance(verdict, Ignored)
    assert verdict.reason == "message-type"


def test_unknown_vapi_status_is_ignored():
    verdict = translate(vapi("ignored-status-update-unknown-status"))
    assert isinstance(verdict, Ignored) and verdict.reason == "unknown-status"


@pytest.mark.parametrize(
    ("reason", "failed"),
    [
        ("call.start.error-get-assistant", True),
        ("call.start.error-subscription-concurrency-limit-reached", True),
        ("call.start.error-vapifault-database-error", True),
        ("call-start-error-neither-assistant-nor-server-set", True),
        ("twilio-failed-to-connect-call", True),
        ("vonage-failed-to-connect-call", True),
        ("pipeline-error-twilio-failed-to-connect-call", True),
        ("call.in-progress.error-sip-outbound-call-failed-to-connect", True),
        ("call.in-progress.error-sip-inbound-call-failed-to-connect", True),
        ("call.ringing.error-sip-inbound-call-failed-to-connect", True),
        ("call.in-progress.error-vapifault-transport-never-connected", True),
        ("call.in-progress.error-providerfault-transport-never-connected", True),
        ("call.in-progress.error-providerfault-outbound-sip-403-forbidden", True),
        ("call.in-progress.error-providerfault-outbound-sip-503-service-unavailable", True),
        ("assistant-not-found", True),
        ("assistant-request-returned-invalid-assistant", True),
        ("scheduled-call-deleted", True),
        ("twilio-reported-customer-misdialed", True),
        ("vonage-rejected", True),
        ("call.in-progress.error-vapifault-worker-not-available", True),
        ("CALL.START.ERROR-GET-ORG", True),
        # Reached the callee, or connected and ended for any reason: "ended".
        ("customer-busy", False),
        ("customer-did-not-answer", False),
        ("customer-ended-call", False),
        ("assistant-ended-call", False),
        ("assistant-forwarded-call", False),
        ("silence-timed-out", False),
        ("exceeded-max-duration", False),
        ("voicemail", False),
        ("manually-canceled", False),
        ("call.in-progress.error-providerfault-outbound-sip-408-request-timeout", False),
        ("call.in-progress.error-providerfault-outbound-sip-480-temporarily-unavailable", False),
        ("call.ringing.sip-inbound-caller-hungup-before-call-connect", False),
        ("pipeline-error-openai-llm-failed", False),
        ("pipeline-error-first-message-failed", False),
        ("call.in-progress.error-vapifault-worker-died", False),
        ("phone-call-provider-closed-websocket", False),
        ("assistant-request-returned-forwarding-phone-number", False),
        ("", False),
        (None, False),
    ],
)
def test_never_connected_reasons(reason, failed):
    assert never_connected(reason) is failed


def status_update(status: str, **call: Any) -> dict[str, Any]:
    return {"message": {"type": "status-update", "status": status,
                        "call": {"id": "call-x", **call}}}


def test_status_update_ended_without_reason_is_ended():
    assert translate(status_update("ended")).status == "ended"


def test_ended_reason_may_come_from_the_call_object():
    draft = translate(status_update("ended", endedReason="call.start.error-get-phone-number"))
    assert (draft.status, draft.data["endedReason"]) == (
        "failed", "call.start.error-get-phone-number")


def test_owner_order_overrides_before_call_metadata():
    body = status_update(
        "ringing",
        assistantOverrides={"metadata": {"userId": "  Alice@Example.COM "}},
        metadata={"userId": "bob@example.com"},
    )
    assert translate(body).user_id == "alice@example.com"
    del body["message"]["call"]["assistantOverrides"]
    assert translate(body).user_id == "bob@example.com"


def test_assistant_metadata_never_names_the_owner():
    body = status_update("ringing")
    body["message"]["assistant"] = {"id": "a1", "metadata": {"userId": "carol@example.com"}}
    body["message"]["call"]["assistant"] = {"metadata": {"userId": "carol@example.com"}}
    assert translate(body).user_id is None


def test_known_owner_wins_then_metadata_then_ignore():
    draft = translate(status_update("ringing", metadata={"userId": "bob@example.com"}))
    assert resolve_owner(draft, "alice@example.com").user_id == "alice@example.com"
    assert resolve_owner(draft, None).user_id == "bob@example.com"
    anonymous = translate(vapi("status-update-inbound-no-owner"))
    assert anonymous.user_id is None
    verdict = resolve_owner(anonymous, None)
    assert isinstance(verdict, Ignored) and verdict.reason == "unknown-owner"
    assert resolve_owner(anonymous, "dave@example.com").user_id == "dave@example.com"


@pytest.mark.parametrize(
    "body",
    [
        {"message": {}},
        {"message": {"type": None}},
        {"message": {"type": ["status-update"]}},
        {"message": {"type": {"x": 1}}},
        {"message": {"type": "status-update"}},
        {"message": {"type": "status-update", "status": "ringing"}},
        {"message": {"type": "status-update", "status": "ringing", "call": "c1"}},
        {"message": {"type": "status-update", "status": "ringing", "call": {"id": 42}}},
        {"message": {"type": "status-update", "status": ["ringing"], "call": {"id": "c1"}}},
        {"message": {"type": "status-update", "status": 3, "call": {"id": "c1"}}},
        {"message": {"type": "end-of-call-report", "call": {"id": "c1", "customer": "+1555"},
                     "endedReason": 7, "timestamp": {"at": 1}}},
        {"message": {"type": "status-update", "status": "ended", "call": {
            "id": "c1", "assistantOverrides": "x", "metadata": ["userId"], "assistantId": 5}},
         "extra": True},
        {"message": {"type": "status-update", "status": "ringing", "timestamp": "yesterday",
                     "call": {"id": "c1", "metadata": {"userId": 12}}}},
    ],
)
def test_strange_but_well_formed_payloads_never_raise(body):
    outcome = translate(body)
    assert isinstance(outcome, EventDraft | Ignored)
    if isinstance(outcome, EventDraft):
        assert outcome.status in {"initiated", "ringing", "in-progress", "ended", "failed"}
        assert all(v is None or isinstance(v, str) for v in outcome.data.values())


@pytest.mark.parametrize("body", [None, [], "message", 5, {}, {"message": "status-update"},
                                  {"message": None}, {"type": "status-update"}])
def test_bodies_that_are_not_server_messages(body):
    with pytest.raises(NotAServerMessage):
        translate(body)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1737916898130, "2025-01-26T18:41:38.130Z"),
        (1737916898130.4, "2025-01-26T18:41:38.130Z"),
        ("1737916898130", "2025-01-26T18:41:38.130Z"),
        (1737916898, "2025-01-26T18:41:38.000Z"),
        ("2025-01-26T18:41:38.130Z", "2025-01-26T18:41:38.130Z"),
        ("2025-01-26T19:41:38.130+01:00", "2025-01-26T18:41:38.130Z"),
        ("2025-01-26T18:41:38", "2025-01-26T18:41:38.000Z"),
        ("2025-01-26T18:41:38.130456Z", "2025-01-26T18:41:38.130Z"),
        ("Sun, 26 Jan 2025 18:41:38 +0000", "2025-01-26T18:41:38.000Z"),
        ("not a time", None),
        ("", None),
        (True, None),
        (None, None),
        (float("nan"), None),
        (float("inf"), None),
        (10**30, None),
        ({"ms": 1}, None),
    ],
)
def test_provider_time(value, expected):
    assert provider_time(value) == expected


# --- live --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vapi_server() -> Iterator[LiveServer]:
    live = start_server({"VAPI_WEBHOOK_SECRET": SECRET}, name="vapi")
    yield live
    live.stop()


def post_vapi(server: LiveServer, body: Any, *, headers: dict[str, str] | None = None,
              secret: str | None = SECRET) -> requests.Response:
    sent = {"X-Vapi-Secret": secret} if secret is not None else {}
    sent.update(headers or {})
    url = f"{server.http}/api/v6/call/webhook/vapi"
    if isinstance(body, str | bytes):
        sent.setdefault("Content-Type", "application/json")
        return requests.post(url, data=body, headers=sent, timeout=10)
    return requests.post(url, json=body, headers=sent, timeout=10)


def fresh_user() -> str:
    return f"vapi-{uuid.uuid4().hex[:10]}@example.com"


def for_call(name: str, call_id: str, user: str | None) -> dict[str, Any]:
    """Return fixture ``name`` re-targeted at ``call_id`` and owner ``user`` (None: no owner)."""
    body = vapi(name)
    call = body["message"]["call"]
    call["id"] = call_id
    call.pop("metadata", None)
    call.pop("assistantOverrides", None)
    if user is not None:
        call["assistantOverrides"] = {"metadata": {"userId": user}}
    return body


def connect(server: LiveServer, clients, user: str):
    client = clients(server.ws)
    assert client.init(user, token=emulator_token(user))["type"] == "connected"
    return client


def test_live_seed_example_reaches_the_owner_in_the_seed_shape(vapi_server, clients):
    user = fresh_user()
    client = connect(vapi_server, clients, user)
    call_id = f"{SEED_CALL}-{uuid.uuid4().hex[:6]}"
    answer = post_vapi(vapi_server, for_call("status-update-ended-customer-busy", call_id, user))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True and body["data"]["delivered"] == 1
    event = client.recv_json(timeout=5)
    assert list(event) == ["event", "callId", "status", "data", "id", "timestamp"]
    assert event == {
        "event": "call.status.changed",
        "callId": call_id,
        "status": "ended",
        "data": {
            "type": "status-update",
            "assistantId": "7ac6d8a8-bf4d-45bc-bd92-41d36be986e1",
            "customerNumber": "+919351044614",
            "endedReason": "customer-busy",
            "providerStatus": "ended",
        },
        "id": body["data"]["id"],
        "timestamp": "2025-01-26T18:41:38.130Z",
    }


def test_live_call_lifecycle_in_order_and_report_is_a_duplicate(vapi_server, clients):
    user = fresh_user()
    client = connect(vapi_server, clients, user)
    call_id = str(uuid.uuid4())
    steps = ["status-update-queued", "status-update-ringing", "status-update-in-progress",
             "status-update-forwarding", "status-update-ended-customer-ended-call",
             "end-of-call-report"]
    answers = [post_vapi(vapi_server, for_call(s, call_id, user)) for s in steps]
    assert [a.status_code for a in answers] == [200] * len(steps)
    data = [a.json()["data"] for a in answers]
    # forwarding is in-progress again and the report repeats "ended": both dropped.
    assert [d.get("dropped") for d in data] == [None, None, None, "duplicate", None, "duplicate"]
    assert data[3] == {"id": None, "delivered": 0, "dropped": "duplicate"}
    received = [client.recv_json(timeout=5) for _ in range(4)]
    assert [e["status"] for e in received] == ["initiated", "ringing", "in-progress", "ended"]
    assert [e["id"] for e in received] == [d["id"] for d in data if d["id"]]
    assert received[1]["timestamp"] == "2025-01-26T18:40:04.118Z"
    assert received[3]["data"]["endedReason"] == "customer-ended-call"


def test_live_report_alone_delivers_end_of_call_report(vapi_server, clients):
    user = fresh_user()
    client = connect(vapi_server, clients, user)
    call_id = str(uuid.uuid4())
    answer = post_vapi(vapi_server, for_call("end-of-call-report-start-error", call_id, user))
    assert answer.status_code == 200 and answer.json()["data"]["delivered"] == 1
    event = client.recv_json(timeout=5)
    assert (event["status"], event["data"]["type"], event["data"]["endedReason"]) == (
        "failed", "end-of-call-report", "call.start.error-subscription-insufficient-credits")


def test_live_ignored_types_answer_200_and_deliver_nothing(vapi_server, clients):
    user = fresh_user()
    client = connect(vapi_server, clients, user)
    call_id = str(uuid.uuid4())
    for name in IGNORED_FIXTURES:
        answer = post_vapi(vapi_server, for_call(name, call_id, user))
        assert answer.status_code == 200, (name, answer.text)
        assert answer.json()["data"] == {"id": None, "delivered": 0, "ignored": "message-type"}
    marker = post_vapi(vapi_server, for_call("status-update-ringing", call_id, user))
    assert client.recv_json(timeout=5)["id"] == marker.json()["data"]["id"]


def test_live_owner_from_call_metadata(vapi_server, clients):
    user = fresh_user()
    client = connect(vapi_server, clients, user)
    body = vapi("status-update-scheduled")
    body["message"]["call"]["id"] = str(uuid.uuid4())
    body["message"]["call"]["metadata"] = {"userId": user.upper()}
    assert post_vapi(vapi_server, body).json()["data"]["delivered"] == 1
    assert client.recv_json(timeout=5)["status"] == "initiated"


def test_live_known_owner_wins_over_metadata(vapi_server, clients):
    owner, other = fresh_user(), fresh_user()
    owner_socket = connect(vapi_server, clients, owner)
    other_socket = connect(vapi_server, clients, other)
    call_id = str(uuid.uuid4())
    registered = vapi_server.publish({"callId": call_id, "userId": owner, "status": "initiated"})
    assert registered.status_code == 200, registered.text
    assert owner_socket.recv_json(timeout=5)["status"] == "initiated"
    answer = post_vapi(vapi_server, for_call("status-update-ringing", call_id, other))
    assert answer.status_code == 200 and answer.json()["data"]["delivered"] == 1
    assert owner_socket.recv_json(timeout=5)["status"] == "ringing"
    # The other user got nothing: the next thing on their socket is their own event.
    marker = post_vapi(vapi_server, for_call("status-update-queued", str(uuid.uuid4()), other))
    assert other_socket.recv_json(timeout=5)["id"] == marker.json()["data"]["id"]


def test_live_unknown_owner_is_acknowledged_and_logged(vapi_server):
    call_id = str(uuid.uuid4())
    answer = post_vapi(vapi_server, for_call("status-update-inbound-no-owner", call_id, None))
    assert answer.status_code == 200
    assert answer.json()["data"] == {"id": None, "delivered": 0, "ignored": "unknown-owner"}
    assert f"call={call_id}" in vapi_server.log()
    assert "unknown-owner" in vapi_server.log()


@pytest.mark.parametrize(
    ("headers", "secret", "code"),
    [
        ({}, None, 401),
        ({}, "wrong-secret", 401),
        ({}, SECRET + "x", 401),
        ({"Authorization": f"Bearer {SECRET}"}, None, 200),
        ({"Authorization": f"bearer {SECRET}"}, None, 200),
        ({"Authorization": "Bearer nope"}, None, 401),
        ({"Authorization": SECRET}, None, 401),
        ({"Authorization": f"Basic {SECRET}"}, None, 401),
        ({"Authorization": "Bearer nope"}, SECRET, 200),
        ({}, SECRET, 200),
    ],
)
def test_live_authentication(vapi_server, headers, secret, code):
    answer = post_vapi(vapi_server, vapi("ignored-transcript"), headers=headers, secret=secret)
    assert answer.status_code == code, answer.text
    if code == 401:
        assert answer.json() == {"success": False, "message": answer.json()["message"]}
        assert "secret" in answer.json()["message"].lower()


def test_live_disabled_without_secret(server):
    answer = post_vapi(server, vapi("status-update-ringing"))
    assert answer.status_code == 404
    body = answer.json()
    assert body["success"] is False and "VAPI_WEBHOOK_SECRET" in body["message"]


@pytest.mark.parametrize("raw", ["{not json", "", "[1, 2]", '"status-update"', '{"message": 5}'])
def test_live_bad_bodies_are_400(vapi_server, raw):
    answer = post_vapi(vapi_server, raw)
    assert answer.status_code == 400
    assert answer.json()["success"] is False and answer.json()["message"]


def test_live_strange_payloads_never_500(vapi_server):
    bodies = [
        {"message": {"type": "status-update", "status": {"a": 1}, "call": {"id": "z"}}},
        {"message": {"type": "status-update", "status": "ringing", "call": {"id": ["z"]}}},
        {"message": {"type": "end-of-call-report", "call": {"id": "odd-1", "metadata": {
            "userId": "odd@example.com"}, "customer": {"number": 5}}, "timestamp": "soon"}},
        {"message": {"type": "status-update", "status": "ended", "endedReason": {"x": 1},
                     "call": {"id": "odd-2", "metadata": {"userId": ""}}}},
        {"message": {"type": 12}},
    ]
    for body in bodies:
        answer = post_vapi(vapi_server, body)
        assert answer.status_code == 200, (body, answer.text)
        assert answer.json()["success"] is True


@pytest.mark.redis
def test_live_over_redis_and_503_when_redis_is_down(tmp_path, clients):
    redis_server = RedisServer(tmp_path).start()
    try:
        live = start_server({"VAPI_WEBHOOK_SECRET": SECRET, "REDIS_URL": redis_server.url},
                            name="vapi-redis")
        try:
            user = fresh_user()
            client = connect(live, clients, user)
            call_id = str(uuid.uuid4())
            answer = post_vapi(live, for_call("status-update-ringing", call_id, user))
            assert answer.status_code == 200 and answer.json()["data"]["delivered"] == 1
            assert client.recv_json(timeout=5)["status"] == "ringing"
            redis_server.stop()
            # Vapi retries a 503: nothing was accepted, so nothing is lost.
            answer = post_vapi(live, for_call("status-update-in-progress", call_id, user))
            assert answer.status_code == 503
            assert answer.json()["success"] is False and answer.json()["message"]
            ignored = post_vapi(live, for_call("ignored-transcript", call_id, user))
            assert ignored.status_code == 200
        finally:
            # Shutdown after an outage is not what this test is about (and takes
            # seconds while the broker's threads back off): end the server at once.
            live.signal(signal.SIGKILL)
            live.process.wait(timeout=10)
    finally:
        redis_server.stop()
