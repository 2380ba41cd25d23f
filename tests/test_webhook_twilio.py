"""Twilio webhook: callback translation, signature validation, and the live endpoint.

Every expected signature here is computed by :func:`twilio_signature`, the
algorithm written out from Twilio's documentation (hmac, hashlib, base64),
never by the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import signal
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests

from blueprints.webhooks.source import Ignored
from blueprints.webhooks.twilio import translate
from blueprints.webhooks.twilio_signature import (
    expected_signature,
    public_url,
    signature_valid,
    url_variants,
)
from tests.fixtures import load
from tests.support.redis_server import RedisServer
from tests.support.server import LiveServer, start_server
from tests.support.tokens import emulator_token
from webapp.events import EventDraft

TOKEN = "twilio-test-auth-token-9d8c7b6a"
PATH = "/api/v6/call/webhook/twilio"


def twilio_signature(token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's algorithm: URL, then each POST parameter name+value sorted by name; HMAC-SHA1."""
    data = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def sequence(name: str) -> dict[str, Any]:
    return load(f"twilio/{name}")


# --- translation ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("call_status", "status", "reason"),
    [
        ("queued", "initiated", None),
        ("initiated", "initiated", None),
        ("ringing", "ringing", None),
        ("in-progress", "in-progress", None),
        ("completed", "ended", None),
        ("busy", "ended", "customer-busy"),
        ("no-answer", "ended", "customer-did-not-answer"),
        ("canceled", "ended", "manually-canceled"),
        ("failed", "failed", None),
    ],
)
def test_call_status_mapping(call_status, status, reason):
    draft = translate({"CallSid": "CA1", "CallStatus": call_status}, "alice@example.com")
    assert isinstance(draft, EventDraft)
    assert (draft.call_id, draft.status, draft.user_id) == ("CA1", status, "alice@example.com")
    assert draft.data["endedReason"] == reason
    assert draft.data["providerStatus"] == call_status
    assert draft.data["type"] == "twilio-status-callback"


FINAL = {
    # fixture: (statuses in order, final endedReason)
    "answered": (["initiated", "ringing", "in-progress", "ended"], None),
    "busy": (["initiated", "ringing", "ended"], "customer-busy"),
    "no-answer": (["initiated", "ringing", "ended"], "customer-did-not-answer"),
    "failed": (["initiated", "failed"], None),
    "canceled": (["initiated", "ringing", "ended"], "manually-canceled"),
    "inbound-answered": (["ringing", "in-progress", "ended"], None),
}


@pytest.mark.parametrize("name", sorted(FINAL))
def test_fixture_sequences_translate(name):
    fixture = sequence(name)
    drafts = [translate(params, fixture["userId"]) for params in fixture["callbacks"]]
    statuses, reason = FINAL[name]
    assert [d.status for d in drafts] == statuses
    assert [d.sequence for d in drafts] == list(range(len(drafts)))
    assert {d.call_id for d in drafts} == {fixture["callbacks"][0]["CallSid"]}
    last = drafts[-1]
    assert last.data["endedReason"] == reason
    assert last.data["callDuration"] == int(fixture["callbacks"][-1]["CallDuration"])
    assert last.data["sipResponseCode"] == int(fixture["callbacks"][-1]["SipResponseCode"])
    assert "callDuration" not in drafts[0].data
    customer = "+12125550147"
    assert {d.data["customerNumber"] for d in drafts} == {customer}


def test_callback_data_and_timestamp():
    params = sequence("answered")["callbacks"][3]
    draft = translate(params, "alice@example.com")
    assert draft.data == {
        "type": "twilio-status-callback",
        "customerNumber": "+12125550147",
        "endedReason": None,
        "providerStatus": "completed",
        "callDuration": 149,
        "sipResponseCode": 200,
    }
    assert draft.timestamp == "2025-01-26T18:40:59.000Z"
    assert draft.sequence == 3


def test_customer_number_follows_direction():
    base = {"CallSid": "CA1", "CallStatus": "ringing", "From": "+1000", "To": "+2000"}
    assert translate({**base, "Direction": "inbound"}, None).data["customerNumber"] == "+1000"
    assert translate({**base, "Direction": "outbound-api"}, None).data["customerNumber"] == "+2000"
    assert translate({**base, "Direction": "outbound-dial"}, None).data["customerNumber"] == "+2000"
    assert translate(base, None).data["customerNumber"] == "+2000"


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({}, "no-call-id"),
        ({"CallStatus": "ringing"}, "no-call-id"),
        ({"CallSid": "", "CallStatus": "ringing"}, "no-call-id"),
        ({"CallSid": "CA1"}, "unknown-status"),
        ({"CallSid": "CA1", "CallStatus": "answered"}, "unknown-status"),
        ({"CallSid": "CA1", "CallStatus": ""}, "unknown-status"),
    ],
)
def test_callbacks_without_a_status_change_are_ignored(params, reason):
    verdict = translate(params, "alice@example.com")
    assert isinstance(verdict, Ignored) and verdict.reason == reason


def test_odd_values_are_dropped_not_fatal():
    draft = translate({"CallSid": "CA1", "CallStatus": "completed", "SequenceNumber": "x",
                       "CallDuration": "-4", "SipResponseCode": "", "Timestamp": "soon"}, None)
    assert draft.sequence is None and draft.timestamp is None and draft.user_id is None
    assert "callDuration" not in draft.data and "sipResponseCode" not in draft.data


# --- signatures ---------------------------------------------------------------------

def test_twilio_published_example():
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
              "From": "+14158675309", "To": "+18005551212"}
    assert twilio_signature("12345", url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert expected_signature("12345", url, params.items()) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert signature_valid("12345", url, params.items(), "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


URL = "https://callwire.example.com/api/v6/call/webhook/twilio?userId=alice%40example.com"
PARAMS = sequence("answered")["callbacks"][1]


def test_correct_signature():
    assert signature_valid(TOKEN, URL, PARAMS.items(), twilio_signature(TOKEN, URL, PARAMS))


def test_wrong_token():
    signature = twilio_signature("another-token", URL, PARAMS)
    assert not signature_valid(TOKEN, URL, PARAMS.items(), signature)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: p.update(CallStatus="completed"),
        lambda p: p.update(To="+19005550000"),
        lambda p: p.update(Extra="1"),
        lambda p: p.pop("SequenceNumber"),
    ],
)
def test_tampered_parameters(tamper):
    signature = twilio_signature(TOKEN, URL, PARAMS)
    params = dict(PARAMS)
    tamper(params)
    assert not signature_valid(TOKEN, URL, params.items(), signature)


@pytest.mark.parametrize(
    "url",
    [
        URL.replace("alice%40example.com", "mallory%40example.com"),
        URL.replace("?userId=alice%40example.com", ""),
        URL.replace("https://", "http://"),
        URL.replace("callwire.example.com", "evil.example.com"),
        URL.replace("/twilio?", "/vapi?"),
    ],
)
def test_tampered_url(url):
    signature = twilio_signature(TOKEN, URL, PARAMS)
    assert not signature_valid(TOKEN, url, PARAMS.items(), signature)


def test_missing_or_garbage_signature():
    for presented in (None, "", "not-base64", twilio_signature(TOKEN, URL, PARAMS)[:-2]):
        assert not signature_valid(TOKEN, URL, PARAMS.items(), presented)


@pytest.mark.parametrize(
    ("signed", "received"),
    [
        ("https://h.example.com:443/p?x=1", "https://h.example.com/p?x=1"),
        ("https://h.example.com/p?x=1", "https://h.example.com:443/p?x=1"),
        ("http://h.example.com:80/p", "http://h.example.com/p"),
        ("http://h.example.com/p", "http://h.example.com:80/p"),
        # Like Twilio's validator: a port the request arrived on may be absent when signed.
        ("https://h.example.com/p", "https://h.example.com:8443/p"),
    ],
)
def test_default_port_quirk(signed, received):
    signature = twilio_signature(TOKEN, signed, PARAMS)
    assert signature_valid(TOKEN, received, PARAMS.items(), signature)


def test_explicit_port_when_signed_must_be_there():
    signature = twilio_signature(TOKEN, "https://h.example.com:8443/p", PARAMS)
    assert not signature_valid(TOKEN, "https://h.example.com/p", PARAMS.items(), signature)


def test_port_variants():
    assert url_variants("https://h.example.com/p?q=1") == [
        "https://h.example.com/p?q=1", "https://h.example.com:443/p?q=1"]
    assert url_variants("http://h.example.com:8080/p") == [
        "http://h.example.com:8080/p", "http://h.example.com/p"]


def test_repeated_parameters_sorted_by_value():
    pairs = [("To", "+2"), ("Flag", "b"), ("Flag", "a")]
    data = URL + "Flag" + "a" + "Flag" + "b" + "To" + "+2"
    signature = base64.b64encode(hmac.new(TOKEN.encode(), data.encode(), hashlib.sha1).digest())
    assert signature_valid(TOKEN, URL, pairs, signature.decode())


HEROKU_ENVIRON = {
    "wsgi.url_scheme": "http",
    "HTTP_HOST": "callwire.example.com",
    "HTTP_X_FORWARDED_PROTO": "https",
    "HTTP_X_FORWARDED_PORT": "443",
    "SERVER_NAME": "0.0.0.0",
    "SERVER_PORT": "31337",
    "PATH_INFO": PATH,
    "QUERY_STRING": "userId=alice%40example.com",
    "RAW_URI": f"{PATH}?userId=alice%40example.com",
}


def test_public_url_behind_a_proxy():
    assert public_url(HEROKU_ENVIRON) == URL
    signature = twilio_signature(TOKEN, URL, PARAMS)
    assert signature_valid(TOKEN, public_url(HEROKU_ENVIRON), PARAMS.items(), signature)
    direct = {**HEROKU_ENVIRON, "HTTP_X_FORWARDED_PROTO": ""}
    assert not signature_valid(TOKEN, public_url(direct), PARAMS.items(), signature)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"HTTP_X_FORWARDED_HOST": "hooks.example.org"},
         f"https://hooks.example.org{PATH}?userId=alice%40example.com"),
        ({"HTTP_X_FORWARDED_PROTO": "https, http"}, URL),
        ({"HTTP_X_FORWARDED_PROTO": "HTTPS"}, URL),
        ({"RAW_URI": None, "REQUEST_URI": None}, URL),
        ({"RAW_URI": f"https://callwire.example.com{PATH}?userId=alice%40example.com"}, URL),
        ({"HTTP_X_FORWARDED_PROTO": None}, URL.replace("https://", "http://")),
        ({"HTTP_HOST": None, "HTTP_X_FORWARDED_PROTO": None},
         f"http://0.0.0.0:31337{PATH}?userId=alice%40example.com"),
    ],
)
def test_public_url_sources(changes, expected):
    environ = {**HEROKU_ENVIRON, **changes}
    environ = {k: v for k, v in environ.items() if v is not None}
    assert public_url(environ) == expected


# --- live --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twilio_server() -> Iterator[LiveServer]:
    live = start_server({"TWILIO_AUTH_TOKEN": TOKEN}, name="twilio")
    yield live
    live.stop()


def callback_url(server: LiveServer, user: str | None) -> str:
    query = f"?userId={quote(user, safe='')}" if user else ""
    return f"{server.http}{PATH}{query}"


def post_callback(server: LiveServer, params: dict[str, str], user: str | None, *,
                  signature: str | None = None, headers: dict[str, str] | None = None,
                  signed_url: str | None = None) -> requests.Response:
    url = callback_url(server, user)
    if signature is None:
        signature = twilio_signature(TOKEN, signed_url or url, params)
    sent = {"X-Twilio-Signature": signature, **(headers or {})}
    return requests.post(url, data=params, headers=sent, timeout=10)


def fresh(name: str) -> tuple[str, str, list[dict[str, str]]]:
    """Return (user, CallSid, callbacks) of fixture ``name`` for a new user and call."""
    fixture = sequence(name)
    user = f"twilio-{uuid.uuid4().hex[:10]}@example.com"
    sid = "CA" + uuid.uuid4().hex
    callbacks = [{**params, "CallSid": sid} for params in fixture["callbacks"]]
    return user, sid, callbacks


def connect(server: LiveServer, clients, user: str):
    client = clients(server.ws)
    assert client.init(user, token=emulator_token(user))["type"] == "connected"
    return client


@pytest.mark.parametrize("name", sorted(FINAL))
def test_live_sequences_in_order(twilio_server, clients, name):
    user, sid, callbacks = fresh(name)
    client = connect(twilio_server, clients, user)
    answers = [post_callback(twilio_server, params, user) for params in callbacks]
    assert [a.status_code for a in answers] == [200] * len(callbacks), answers[-1].text
    assert all(a.json()["data"]["delivered"] == 1 for a in answers)
    events = [client.recv_json(timeout=5) for _ in callbacks]
    statuses, reason = FINAL[name]
    assert [e["status"] for e in events] == statuses
    assert [e["id"] for e in events] == [a.json()["data"]["id"] for a in answers]
    last = events[-1]
    assert list(last) == ["event", "callId", "status", "data", "id", "timestamp"]
    assert (last["event"], last["callId"]) == ("call.status.changed", sid)
    assert last["data"]["endedReason"] == reason
    assert last["data"]["providerStatus"] == callbacks[-1]["CallStatus"]
    assert last["timestamp"].startswith("2025-01-26T18:40:")


def test_live_reordered_and_duplicated_deliveries_never_go_backwards(twilio_server, clients):
    user, sid, callbacks = fresh("answered")
    client = connect(twilio_server, clients, user)
    initiated, ringing, answered, completed = callbacks
    order = [initiated, initiated, answered, ringing, answered, completed, completed, ringing]
    outcomes = []
    for params in order:
        answer = post_callback(twilio_server, params, user)
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        outcomes.append(data.get("dropped") or "delivered")
    assert outcomes == ["delivered", "duplicate", "delivered", "stale", "duplicate",
                        "delivered", "duplicate", "stale"]
    events = [client.recv_json(timeout=5) for _ in range(3)]
    assert [e["status"] for e in events] == ["initiated", "in-progress", "ended"]
    # Nothing else was delivered: the next message is a marker event of another call.
    marker = twilio_server.publish({"callId": f"marker-{sid}", "userId": user, "status": "ringing"})
    assert client.recv_json(timeout=5)["id"] == marker.json()["data"]["id"]


def test_live_lower_sequence_number_is_stale_even_with_a_later_status(twilio_server, clients):
    user, sid, callbacks = fresh("answered")
    client = connect(twilio_server, clients, user)
    ringing = callbacks[1]
    late_in_progress = {**callbacks[2], "SequenceNumber": "0"}
    assert post_callback(twilio_server, ringing, user).json()["data"]["delivered"] == 1
    answer = post_callback(twilio_server, late_in_progress, user)
    assert answer.json()["data"]["dropped"] == "stale"
    assert client.recv_json(timeout=5)["status"] == "ringing"


def test_live_behind_a_proxy(twilio_server, clients):
    user, sid, callbacks = fresh("busy")
    client = connect(twilio_server, clients, user)
    public = f"https://callwire.example.com{PATH}?userId={quote(user, safe='')}"
    proxy = {"Host": "callwire.example.com", "X-Forwarded-Proto": "https",
             "X-Forwarded-Port": "443", "X-Forwarded-For": "54.172.60.1"}
    answer = post_callback(twilio_server, callbacks[0], user, headers=proxy, signed_url=public)
    assert answer.status_code == 200, answer.text
    assert client.recv_json(timeout=5)["status"] == "initiated"
    # Twilio signed the public URL: the same request without the proxy's headers is refused.
    answer = post_callback(twilio_server, callbacks[1], user, signed_url=public)
    assert answer.status_code == 401
    with_port = public.replace("example.com/", "example.com:443/")
    answer = post_callback(twilio_server, callbacks[1], user, headers=proxy, signed_url=with_port)
    assert answer.status_code == 200, answer.text
    assert client.recv_json(timeout=5)["status"] == "ringing"


def test_live_bad_signatures_are_401(twilio_server, clients):
    user, sid, callbacks = fresh("answered")
    client = connect(twilio_server, clients, user)
    params = callbacks[0]
    url = callback_url(twilio_server, user)
    good = twilio_signature(TOKEN, url, params)
    cases = [
        ("", params),
        (twilio_signature("wrong-token", url, params), params),
        (good, {**params, "CallStatus": "completed"}),
        (twilio_signature(TOKEN, callback_url(twilio_server, "mallory@example.com"), params),
         params),
    ]
    for signature, sent in cases:
        answer = post_callback(twilio_server, sent, user, signature=signature)
        assert answer.status_code == 401, answer.text
        assert answer.json() == {"success": False, "message": "Missing or wrong X-Twilio-Signature"}
    missing = requests.post(url, data=params, timeout=10)
    assert missing.status_code == 401
    assert post_callback(twilio_server, params, user, signature=good).status_code == 200
    assert client.recv_json(timeout=5)["status"] == "initiated"


def test_live_owner_from_known_call_then_unknown_then_conflict(twilio_server, clients):
    user, sid, callbacks = fresh("answered")
    client = connect(twilio_server, clients, user)
    assert post_callback(twilio_server, callbacks[0], user).json()["data"]["delivered"] == 1
    # Later callbacks may drop ?userId=: the CallSid's owner is known.
    answer = post_callback(twilio_server, callbacks[1], None)
    assert answer.status_code == 200 and answer.json()["data"]["delivered"] == 1
    # A callback naming another user for this call is acknowledged and never delivered.
    answer = post_callback(twilio_server, callbacks[2], "mallory@example.com")
    assert answer.status_code == 200
    assert answer.json()["data"] == {"id": None, "delivered": 0, "ignored": "ownership-conflict"}
    assert [client.recv_json(timeout=5)["status"] for _ in range(2)] == ["initiated", "ringing"]
    # A call nobody owns yet, without ?userId=: acknowledged and logged.
    _, orphan_sid, orphan = fresh("busy")
    answer = post_callback(twilio_server, orphan[0], None)
    assert answer.status_code == 200
    assert answer.json()["data"] == {"id": None, "delivered": 0, "ignored": "unknown-owner"}
    assert orphan_sid in twilio_server.log()


def test_live_ignored_callbacks_answer_200(twilio_server):
    user, sid, callbacks = fresh("answered")
    for params in ({**callbacks[0], "CallStatus": "answered"}, {"AccountSid": "AC1"}):
        answer = post_callback(twilio_server, params, user)
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["delivered"] == 0


def test_live_disabled_without_token(server):
    params = sequence("answered")["callbacks"][0]
    answer = post_callback(server, params, "alice@example.com")
    assert answer.status_code == 404
    assert answer.json()["success"] is False and "TWILIO_AUTH_TOKEN" in answer.json()["message"]


@pytest.mark.redis
def test_live_over_redis_and_503_when_redis_is_down(tmp_path, clients):
    redis_server = RedisServer(tmp_path).start()
    try:
        live = start_server({"TWILIO_AUTH_TOKEN": TOKEN, "REDIS_URL": redis_server.url},
                            name="twilio-redis")
        try:
            user, sid, callbacks = fresh("answered")
            client = connect(live, clients, user)
            initiated, ringing, answered, completed = callbacks
            for params, outcome in ((initiated, None), (answered, None), (ringing, "stale")):
                answer = post_callback(live, params, user)
                assert answer.status_code == 200, answer.text
                assert answer.json()["data"].get("dropped") == outcome
            assert [client.recv_json(timeout=5)["status"] for _ in range(2)] == [
                "initiated", "in-progress"]
            redis_server.stop()
            answer = post_callback(live, completed, user)
            assert answer.status_code == 503
            assert answer.json()["success"] is False and answer.json()["message"]
        finally:
            # Shutdown after an outage is not what this test is about (and takes
            # seconds while the broker's threads back off): end the server at once.
            live.signal(signal.SIGKILL)
            live.process.wait(timeout=10)
    finally:
        redis_server.stop()
