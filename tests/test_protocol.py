"""Client frame parsing and server message shapes (docs/protocol.md)."""

from __future__ import annotations

import json

import pytest

from webapp.protocol import (
    INVALID_FORMAT,
    ClientMessage,
    ProtocolError,
    authenticated,
    connected,
    encode,
    error,
    optional_string,
    parse_client_frame,
    pong,
)


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "",
        "   ",
        "{",
        "{'type': 'init'}",  # Python, not JSON
        "[1, 2]",
        '["init"]',
        '"init"',
        "42",
        "null",
        "true",
        "{}",
        '{"payload": {"userId": "a@b.c"}}',
        '{"type": 1}',
        '{"type": null}',
        '{"type": ["init"]}',
        '{"type": {"name": "init"}}',
        '{"type": true}',
        b'{"type": "ping"}',  # binary frame, even with valid JSON inside
        b"\x00\x01\x02",
        b"",
    ],
)
def test_format_errors_are_the_seed_message(frame):
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(frame)
    assert str(caught.value) == "Invalid message format"


def test_invalid_format_is_the_seed_wording():
    assert INVALID_FORMAT == "Invalid message format"
    assert error(INVALID_FORMAT) == {"type": "error", "message": "Invalid message format"}


@pytest.mark.parametrize("kind", ["pong", "subscribe", "INIT", "Ping", "", "connected", "error"])
def test_unknown_type_names_the_problem(kind):
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(json.dumps({"type": kind}))
    message = str(caught.value)
    assert message != "Invalid message format"
    assert message.startswith("Unknown message type")


def test_unknown_type_message_is_bounded():
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(json.dumps({"type": "x" * 10_000}))
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("payload", [[], "user@example.com", 5, True, [{"userId": "a@b.c"}]])
def test_payload_that_is_not_an_object_is_an_error(payload):
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(json.dumps({"type": "init", "payload": payload}))
    message = str(caught.value)
    assert message != "Invalid message format"
    assert "payload" in message


def test_seed_init_parses():
    message = parse_client_frame(
        json.dumps({"type": "init", "payload": {"userId": "user@example.com"}})
    )
    assert message == ClientMessage("init", {"userId": "user@example.com"})


@pytest.mark.parametrize("frame", ['{"type":"ping"}', '{"type":"ping","payload":null}'])
def test_ping_without_payload_parses(frame):
    assert parse_client_frame(frame) == ClientMessage("ping", {})


def test_auth_parses_and_extra_keys_are_ignored():
    frame = json.dumps({"type": "auth", "payload": {"token": "t"}, "extra": 1})
    assert parse_client_frame(frame) == ClientMessage("auth", {"token": "t"})


def test_optional_string():
    assert optional_string({"userId": "a@b.c"}, "userId") == "a@b.c"
    assert optional_string({}, "userId") is None
    assert optional_string({"userId": None}, "userId") is None
    assert optional_string({"userId": "   "}, "userId") is None
    with pytest.raises(ProtocolError, match="userId"):
        optional_string({"userId": 5}, "userId")
    with pytest.raises(ProtocolError, match="token"):
        optional_string({"token": {"a": 1}}, "token")


def test_connected_is_exactly_the_seed_object():
    assert connected("user@example.com") == {
        "type": "connected",
        "userId": "user@example.com",
        "message": "Successfully connected to WebSocket server",
    }
    # Extra keys are allowed, after the seed's three.
    assert list(connected("u@x.y", recovered=True)) == ["type", "userId", "message", "recovered"]


def test_other_server_messages():
    assert pong() == {"type": "pong"}
    assert authenticated("u@x.y", "2030-01-01T00:00:00.000Z") == {
        "type": "authenticated",
        "userId": "u@x.y",
        "expiresAt": "2030-01-01T00:00:00.000Z",
    }


def test_encode_is_compact_utf8_json():
    text = encode({"type": "error", "message": "é"})
    assert text == '{"type":"error","message":"é"}'
    assert json.loads(text) == {"type": "error", "message": "é"}
