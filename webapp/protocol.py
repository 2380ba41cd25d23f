"""The raw JSON WebSocket protocol: parse client frames, build server messages.

Messages sent to clients are built here and nowhere else, so the seed's exact
wording lives in one place (docs/protocol.md, appendix).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from webapp.validation import check_json, dumps

INVALID_FORMAT = "Invalid message format"
CONNECTED_MESSAGE = "Successfully connected to WebSocket server"

CLIENT_TYPES = frozenset({"init", "ping", "auth"})


class ProtocolError(Exception):
    """A client frame that breaks the protocol; the message is sent back as an error."""


@dataclass(frozen=True)
class ClientMessage:
    """One parsed client frame."""

    type: str
    payload: dict[str, Any]


def parse_client_frame(frame: str | bytes) -> ClientMessage:
    """Parse a text frame into a :class:`ClientMessage` or raise :class:`ProtocolError`.

    Binary frames, text that is not JSON, JSON that is not an object and objects
    without a string ``type`` are all the seed's "Invalid message format". So
    is JSON that Callwire would not accept anywhere: nested too deeply (even
    thousands deep), text with lone surrogates, non-finite numbers, integers
    of more than 4,300 digits (see :mod:`webapp.validation`).
    """
    if not isinstance(frame, str):
        raise ProtocolError(INVALID_FORMAT)
    try:
        data = json.loads(frame)
        check_json(data)
    except (ValueError, RecursionError):  # InvalidInput and JSONDecodeError are ValueErrors
        raise ProtocolError(INVALID_FORMAT) from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError(INVALID_FORMAT)
    kind = data["type"]
    if kind not in CLIENT_TYPES:
        raise ProtocolError(f"Unknown message type: {kind[:64]}")
    payload = data.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise ProtocolError(f"Invalid {kind} payload: expected an object")
    return ClientMessage(kind, payload)


def optional_string(payload: dict[str, Any], key: str) -> str | None:
    """Return ``payload[key]`` if it is a non-empty string, None if absent; else raise."""
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"Invalid {key}: expected a string")
    return value if value.strip() else None


def connected(user_id: str, **extra: Any) -> dict[str, Any]:
    """Build the seed's confirmation, with optional extra keys after the seed's three."""
    return {"type": "connected", "userId": user_id, "message": CONNECTED_MESSAGE, **extra}


def error(message: str) -> dict[str, Any]:
    """Build an error message in the seed's shape."""
    return {"type": "error", "message": message}


def pong() -> dict[str, Any]:
    """Build the answer to an application-level ping."""
    return {"type": "pong"}


def authenticated(user_id: str, expires_at: str) -> dict[str, Any]:
    """Build the answer to a successful token refresh."""
    return {"type": "authenticated", "userId": user_id, "expiresAt": expires_at}


def encode(message: dict[str, Any]) -> str:
    """Serialise a server message compactly as strict JSON (see :func:`webapp.validation.dumps`)."""
    return dumps(message)
