"""Inbound data rules, in one place, and the strict JSON every answer is written in.

Every source (the publish API, the Vapi and Twilio webhooks, test messages,
client frames) hands what it received to the checks below *before* anything
is stored or sent, so a refused input leaves no trace and an accepted one can
always be encoded. The rules:

- text is valid Unicode (JSON's ``"\\ud800"`` escape can smuggle in a lone
  surrogate, which no UTF-8 encoder accepts);
- numbers are finite (``NaN``, ``Infinity`` and ``1e400`` are not JSON), and
  integers can be written (Python refuses to read or print more than 4,300
  digits: such a body is not JSON to us);
- values nest at most :data:`MAX_DEPTH` levels, far from any recursion limit;
- an event's ``data`` encodes to at most :data:`MAX_DATA_BYTES`;
- ``callId``, ``userId`` and ``idempotencyKey`` have bounded lengths, and a
  ``callId`` can always be read back in ``GET /api/v6/call/<callId>/status``.

Everything Callwire writes goes through :func:`dumps` (frames) or
:class:`StrictJSONProvider` (REST answers): no ``NaN`` ever leaves the process.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any

from flask.json.provider import DefaultJSONProvider

from webapp.events import STATUSES, EventDraft, PublishError

#: Longest callId, userId (an email) and idempotencyKey, in characters.
MAX_CALL_ID_LENGTH = 256
MAX_USER_ID_LENGTH = 320
MAX_IDEMPOTENCY_KEY_LENGTH = 256
#: Deepest nesting of an event's ``data``, a test message or a client frame
#: (an object or array directly inside ``data`` is level 2).
MAX_DEPTH = 32
#: Largest ``data`` of one event, as compact UTF-8 JSON.
MAX_DATA_BYTES = 64 * 1024
#: Provider sequence numbers (Twilio ``SequenceNumber``) compare exactly below this.
MAX_SEQUENCE = 2**53

#: A callId is one path segment of the status URL: no ``/`` (nor ``\\``, which
#: browsers turn into one), no whitespace, no control characters, not ``.`` or ``..``.
CALL_ID_PATTERN = r"^(?!\.\.?$)[^\s/\\\x00-\x1f\x7f-\x9f]+$"
_CALL_ID = re.compile(CALL_ID_PATTERN)
CALL_ID_RULE = "free of '/', '\\', whitespace and control characters, and not '.' or '..'"


class InvalidInput(ValueError):
    """A value that is not valid JSON text for Callwire; the message says why."""


class InvalidEvent(PublishError):
    """An event refused before anything was stored: invalid text, numbers, size or ids."""

    status = 400


def check_text(value: str) -> None:
    """Raise :class:`InvalidInput` unless ``value`` is valid Unicode (no lone surrogates)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(
                "text must be valid Unicode (it holds a lone surrogate such as \\ud800)"
            ) from None


def check_json(value: Any, max_depth: int = MAX_DEPTH) -> int:
    """Raise :class:`InvalidInput` unless ``value`` is plain JSON that any encoder can write.

    Walks without recursion, so no input can exhaust the stack. Returns an
    upper bound of its size as compact UTF-8 JSON (a character takes at most
    six bytes, as ``\\u0000``), so most values need no encoding to be measured.
    """
    bound = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:
            check_text(item)
            bound += 6 * len(item) + 2
        elif kind is dict or kind is list:
            if depth > max_depth:
                raise InvalidInput(f"nested more than {max_depth} levels deep")
            bound += 2
            if kind is dict:
                for key, inner in item.items():
                    if type(key) is not str:
                        raise InvalidInput("object keys must be strings")
                    check_text(key)
                    bound += 6 * len(key) + 4  # quotes, colon, comma
                    stack.append((inner, depth + 1))
            else:
                bound += len(item)  # commas
                stack.extend((inner, depth + 1) for inner in item)
        elif kind is float:
            if not math.isfinite(item):
                raise InvalidInput(
                    "numbers must be finite: NaN, Infinity and numbers as large as 1e400 "
                    "are not JSON"
                )
            bound += 24  # the longest repr of a float
        elif kind is int:
            if item.bit_length() > 64:
                try:
                    str(item)
                except ValueError:  # more than sys.get_int_max_str_digits() (4,300) digits
                    raise InvalidInput("integers must have at most 4300 digits") from None
            bound += item.bit_length() // 3 + 2  # digits (fewer than bits / 3.32) and sign
        elif item is None or kind is bool:
            bound += 5
        else:
            raise InvalidInput(f"{kind.__name__} is not a JSON value")
    return bound


def check_draft(draft: EventDraft) -> None:
    """Raise :class:`InvalidEvent` unless every part of ``draft`` may be stored and sent.

    The one check every source's event passes before the broker sees it.
    """
    try:
        _check_id("callId", draft.call_id, MAX_CALL_ID_LENGTH)
        if _CALL_ID.fullmatch(draft.call_id) is None:
            raise InvalidInput(f"callId must be {CALL_ID_RULE}")
        if draft.user_id is not None:
            _check_id("userId", draft.user_id, MAX_USER_ID_LENGTH)
        if draft.idempotency_key is not None:
            _check_id("idempotencyKey", draft.idempotency_key, MAX_IDEMPOTENCY_KEY_LENGTH)
        if draft.status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)}")
        if draft.sequence is not None and not 0 <= draft.sequence < MAX_SEQUENCE:
            raise InvalidInput(f"sequence must be between 0 and {MAX_SEQUENCE - 1}")
        if type(draft.data) is not dict:
            raise InvalidInput("data must be a JSON object")
        _check_data(draft.data)
    except InvalidInput as problem:
        raise InvalidEvent(f"Invalid event: {problem}") from None


def check_message(value: Any) -> None:
    """Raise :class:`InvalidEvent` unless a live-only message (test message) can be sent."""
    try:
        check_json(value)
    except InvalidInput as problem:
        raise InvalidEvent(f"Invalid message: {problem}") from None


def _check_id(name: str, value: str, longest: int) -> None:
    if not 1 <= len(value) <= longest:
        raise InvalidInput(f"{name} must be 1 to {longest} characters, not {len(value)}")
    try:
        check_text(value)
    except InvalidInput as problem:
        raise InvalidInput(f"{name}: {problem}") from None


def _check_data(data: dict[str, Any]) -> None:
    try:
        bound = check_json(data, MAX_DEPTH)
    except InvalidInput as problem:
        raise InvalidInput(f"data: {problem}") from None
    if bound <= MAX_DATA_BYTES:
        return
    encoded = dumps(data)
    # Characters never outnumber bytes: count bytes only when it could matter.
    if len(encoded) > MAX_DATA_BYTES or (
        not encoded.isascii() and len(encoded.encode("utf-8")) > MAX_DATA_BYTES
    ):
        raise InvalidInput(
            f"data must encode to at most {MAX_DATA_BYTES} bytes of JSON "
            f"(this one is {len(encoded.encode('utf-8'))})"
        )


# -- out: strict JSON ------------------------------------------------------------------


#: Built once: ``json.dumps`` with arguments builds a new encoder on every call.
_STRICT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_STRICT_ASCII = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Encode ``value`` as compact, strict JSON text that is also valid UTF-8.

    Refuses ``NaN`` and infinities (ValueError). Text is written as is, except
    when it is not valid Unicode: then it is escaped, so the frame can still be
    sent and parsed (inputs are checked before this; the fallback is a net).
    """
    text = _STRICT.encode(value)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = _STRICT_ASCII.encode(value)
    return text


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON with ``NaN`` and infinities refused: REST answers are always strict JSON."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if kwargs == _COMPACT:
            # Every REST answer (``response()`` outside debug mode): one encoder kept
            # per setting instead of the one ``json.dumps`` builds per call with
            # these arguments (about half the cost of encoding a publish answer).
            return self._compact_encoder.encode(obj)
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)

    @functools.cached_property
    def _compact_encoder(self) -> json.JSONEncoder:
        """The encoder ``dumps(obj, separators=(",", ":"))`` would build, built once."""
        return json.JSONEncoder(
            separators=(",", ":"), default=self.default, ensure_ascii=self.ensure_ascii,
            sort_keys=self.sort_keys, allow_nan=False,
        )


#: What Flask's ``DefaultJSONProvider.response`` passes to ``dumps`` for a compact answer.
_COMPACT = {"separators": (",", ":")}
