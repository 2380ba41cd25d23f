"""Property tests of every parser and translator: an accepted value or a clear error, never a crash.

For client frames, publish bodies, Vapi and Twilio payloads and provider
times, hypothesis generates what a hostile or buggy sender could send (odd
Unicode with lone surrogates, NaN and infinities, huge integers, deep
nesting, wrong types). Whatever is accepted must pass the shared checks of
``webapp.validation``, encode as strict JSON and read back equal.
"""

from __future__ import annotations

import json
import math
from typing import Any

import marshmallow as ma
import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blueprints.call_events import draft_from
from blueprints.webhooks import twilio, vapi
from blueprints.webhooks.source import Ignored, provider_time
from webapp.events import EventDraft, event_message
from webapp.protocol import INVALID_FORMAT, ClientMessage, ProtocolError, encode, parse_client_frame
from webapp.validation import (
    InvalidEvent,
    InvalidInput,
    StrictJSONProvider,
    check_draft,
    check_json,
    dumps,
)

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------------------

#: Any code point, lone surrogates included (hypothesis leaves them out by default).
any_char = st.characters(codec=None, exclude_categories=())
odd_text = st.sampled_from(
    ["", " ", "\ud800", "\udfff", "a\ud83d", "😀", "\u2028", "\x00", "/", "..", "a/b", "é" * 300]
) | st.text(any_char, max_size=12)
#: Hostile constants first, so every run meets them, then anything.
numbers = (st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324, 2**64,
                            -(2**63) - 1, 10**4000])
           | st.integers() | st.floats(allow_nan=True, allow_infinity=True))
scalars = st.none() | st.booleans() | numbers | odd_text
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


deep_values = st.integers(min_value=0, max_value=80).map(nested)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return strategy | json_values


def as_frame(value: Any) -> str:
    """Serialise as a client might: NaN and surrogate escapes included."""
    return json.dumps(value)


# -- the checks themselves -------------------------------------------------------------------


def assert_strict_round_trip(value: Any) -> None:
    """``value`` is strict JSON as it stands: no NaN, valid UTF-8 without escaping, and
    it reads back equal (``dumps``'s escaping net for lone surrogates is not needed)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")  # valid UTF-8, so it can be sent as a text frame
    assert dumps(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def refuse(name: str) -> None:
        raise AssertionError(f"not strict JSON: {name}")

    assert json.loads(text, parse_constant=refuse) == value


@FUZZ
@given(maybe(deep_values))
def test_check_json_accepts_only_what_encodes_strictly_and_round_trips(value):
    try:
        check_json(value)
    except InvalidInput as problem:
        assert str(problem)
        return
    assert_strict_round_trip(value)


@FUZZ
@given(json_values | deep_values | st.sampled_from([-(10**4000), 10**4299, "\x00" * 9, "😀" * 9]))
def test_check_json_bounds_the_encoded_size_so_small_data_needs_no_encoding(value):
    try:
        bound = check_json(value)
    except InvalidInput:
        return
    assert bound >= len(dumps(value).encode("utf-8"))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "\ud800", {"\udc00": 1},
                                   nested(33), [nested(2000)]])
def test_check_json_refuses_what_is_not_strict_json(value):
    with pytest.raises(InvalidInput):
        check_json(value)


@FUZZ
@given(json_values)
def test_dumps_never_writes_nan_and_always_writes_valid_utf8(value):
    try:
        text = dumps(value)
    except ValueError:  # NaN and infinities are refused, never written
        return
    text.encode("utf-8")
    json.loads(text)


# -- client frames ---------------------------------------------------------------------------

frame_texts = st.one_of(
    st.text(any_char, max_size=40),
    json_values.map(as_frame),
    deep_values.map(as_frame),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["init", "ping", "auth"]) | odd_text},
        optional={"payload": maybe(st.fixed_dictionaries(
            {}, optional={"userId": maybe(odd_text), "token": maybe(odd_text),
                          "lastEventId": maybe(odd_text)}))},
    ).map(as_frame),
    st.integers(min_value=1, max_value=12_000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=1, max_value=6_000).map(lambda n: '{"type":"ping","x":' + "9" * n + "}"),
)


@FUZZ
@given(frame_texts | st.binary(max_size=20))
def test_any_client_frame_is_a_message_or_a_clear_protocol_error(frame):
    try:
        message = parse_client_frame(frame)
    except ProtocolError as problem:
        assert str(problem) and len(str(problem)) < 200
        encode({"type": "error", "message": str(problem)}).encode("utf-8")
        return
    assert isinstance(message, ClientMessage) and message.type in {"init", "ping", "auth"}
    assert_strict_round_trip(message.payload)


def test_a_frame_nested_ten_thousand_deep_is_the_format_error():
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame("[" * 10_000 + "]" * 10_000)
    assert str(caught.value) == INVALID_FORMAT


# -- publish bodies, through the same path as POST /events ----------------------------------

publish_items = st.fixed_dictionaries(
    {"callId": maybe(odd_text),
     "status": st.sampled_from(["ringing", "ended", "bogus"]) | odd_text},
    optional={
        "userId": maybe(odd_text | st.just("a@example.com")),
        "data": maybe(st.dictionaries(odd_text, json_values, max_size=5) | deep_values),
        "idempotencyKey": maybe(odd_text),
        "timestamp": maybe(st.sampled_from([
            "0001-01-01T00:04:00+02:00", "9999-12-31T23:59:00-02:00", "2026-12-01T10:00:00Z",
            "2026-12-01T10:00:00", "not a time", "",
        ])),
        "extra": json_values,
    },
) | json_values


def assert_accepted_event_is_strict(draft: EventDraft) -> None:
    """The shared checks pass or refuse clearly; what passes encodes and round-trips."""
    try:
        check_draft(draft)
    except InvalidEvent as refusal:
        assert str(refusal).startswith("Invalid event: ") and refusal.status == 400
        return
    message = event_message("0000000000000001", draft, draft.timestamp or "2026-12-01T00:00:00Z")
    assert_strict_round_trip(message)
    assert json.loads(encode(message)) == message


@FUZZ
@given(publish_items)
def test_any_publish_item_is_an_event_or_a_clear_400(item):
    try:
        draft = draft_from(item)
    except ma.ValidationError as error:
        assert error.messages
        return
    assert_accepted_event_is_strict(draft)


# -- Vapi --------------------------------------------------------------------------------------

vapi_calls = st.fixed_dictionaries({}, optional={
    "id": maybe(odd_text),
    "status": maybe(st.sampled_from(list(vapi.STATUS_MAP)) | odd_text),
    "assistantId": maybe(odd_text),
    "endedReason": maybe(odd_text),
    "customer": maybe(st.fixed_dictionaries({}, optional={"number": maybe(odd_text)})),
    "metadata": maybe(st.fixed_dictionaries({}, optional={"userId": maybe(odd_text)})),
    "assistantOverrides": maybe(st.fixed_dictionaries({}, optional={
        "metadata": maybe(st.fixed_dictionaries({}, optional={"userId": maybe(odd_text)}))})),
})
vapi_bodies = st.fixed_dictionaries({"message": maybe(st.fixed_dictionaries({}, optional={
    "type": maybe(st.sampled_from([*vapi.EVENT_TYPES, "transcript"]) | odd_text),
    "status": maybe(st.sampled_from(list(vapi.STATUS_MAP)) | odd_text),
    "endedReason": maybe(odd_text),
    "timestamp": maybe(numbers | odd_text),
    "call": maybe(vapi_calls),
    "customer": maybe(st.fixed_dictionaries({}, optional={"number": maybe(odd_text)})),
    "assistant": json_values,
}))}) | json_values


@FUZZ
@given(vapi_bodies, st.none() | odd_text)
def test_any_vapi_body_is_an_event_an_ignore_or_a_clear_400(body, known_owner):
    try:
        outcome = vapi.translate(body)
    except vapi.NotAServerMessage as error:
        assert "Vapi server message" in str(error)
        return
    if isinstance(outcome, Ignored):
        assert outcome.reason and len(outcome.detail) < 300
        return
    resolved = vapi.resolve_owner(outcome, known_owner)
    if isinstance(resolved, Ignored):
        return
    assert_accepted_event_is_strict(resolved)


# -- Twilio ------------------------------------------------------------------------------------

form_values = odd_text | st.integers().map(str) | st.sampled_from(["", "-1", "1" * 5000])
twilio_forms = st.fixed_dictionaries({}, optional={
    "CallSid": form_values,
    "CallStatus": st.sampled_from(list(twilio.STATUS_MAP)) | form_values,
    "SequenceNumber": form_values,
    "CallDuration": form_values,
    "SipResponseCode": form_values,
    "Direction": st.sampled_from(["inbound", "outbound-api"]) | form_values,
    "From": form_values,
    "To": form_values,
    "Timestamp": form_values | st.sampled_from(
        ["Tue, 01 Dec 2026 10:00:00 +0000", "Mon, 01 Jan 0001 00:00:00 +0200"]),
})


@FUZZ
@given(twilio_forms, st.none() | odd_text)
def test_any_twilio_callback_is_an_event_or_an_ignore(params, owner):
    outcome = twilio.translate(params, owner)
    if isinstance(outcome, Ignored):
        assert outcome.reason and len(outcome.detail) < 300
        return
    assert_accepted_event_is_strict(outcome)


@FUZZ
@given(numbers | odd_text | json_values)
def test_provider_times_are_a_utc_timestamp_or_none(value):
    moment = provider_time(value)
    assert moment is None or (moment.endswith("Z") and len(moment) == 24), moment
    if isinstance(value, float) and not math.isfinite(value):
        assert moment is None


_app = Flask(__name__)  # the provider holds its app weakly
_provider = StrictJSONProvider(_app)


@FUZZ
@given(maybe(deep_values))
def test_rest_answers_are_what_json_dumps_writes_and_never_hold_nan(value):
    """The provider's kept encoder writes what Flask's ``json.dumps`` call would, refusing NaN."""
    try:
        expected = json.dumps(value, separators=(",", ":"), default=_provider.default,
                              ensure_ascii=True, sort_keys=False, allow_nan=False)
    except ValueError:
        with pytest.raises(ValueError):
            _provider.dumps(value, separators=(",", ":"))
        with pytest.raises(ValueError):
            _provider.response(value)
        return
    assert _provider.dumps(value, separators=(",", ":")) == expected
    assert _provider.response(value).get_data(as_text=True) == expected + "\n"
