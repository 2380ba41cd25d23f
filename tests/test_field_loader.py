"""The publish endpoint's slim loader gives exactly what ``EventSchema().load`` gives.

Same values, same defaults, same error messages keyed the same way, over a
seeded mix of good and bad values for every field (and unknown keys).
"""

from __future__ import annotations

import random
from typing import Any

import marshmallow as ma
import pytest

from blueprints import schemas
from blueprints.schemas import EventSchema, FieldLoader

MISSING = object()

CANDIDATES: dict[str, list[Any]] = {
    "callId": ["call-1", "", "x" * 256, "x" * 257, 7, None, ["a"], {"a": 1}, True, "é☎"],
    "userId": ["a@b.com", "", "u" * 320, "u" * 321, None, 5, 1.5, {"x": 1}],
    "status": ["initiated", "ringing", "in-progress", "ended", "failed", "RINGING", "", None, 3],
    "data": [{}, {"a": [1, {"b": None}]}, None, [], "text", 1, {"n": 1.5}],
    "idempotencyKey": ["key", "", "k" * 257, None, 12, ["k"]],
    "timestamp": [
        "2026-01-02T03:04:05Z", "2026-01-02T03:04:05.678+02:00", "2026-01-02T03:04:05",
        "2026-13-02T03:04:05Z", "yesterday", "", None, 1700000000, "2026-01-02",
    ],
    "unknownKey": ["ignored", 1],
}


def outcome(load: Any, item: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", load(item)
    except ma.ValidationError as error:
        return "error", error.messages


def test_valid_and_invalid_events_load_exactly_as_with_the_schema():
    schema, loader = EventSchema(), FieldLoader(EventSchema())
    rng = random.Random(11)
    seen = set()
    for _ in range(3000):
        item = {}
        for name, values in CANDIDATES.items():
            value = rng.choice([*values, MISSING])
            if value is not MISSING:
                item[name] = value
        expected = outcome(schema.load, item)
        assert outcome(loader.load, item) == expected, item
        seen.add(expected[0])
    assert seen == {"ok", "error"}


def test_schemas_the_loader_cannot_stand_in_for_are_refused():
    class Hooked(ma.Schema):
        name = ma.fields.String()

        @ma.post_load
        def shout(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
            return data

    with pytest.raises(TypeError):
        FieldLoader(Hooked())
    with pytest.raises(TypeError):
        FieldLoader(schemas.TestMessageSchema(unknown=ma.RAISE))

    class FieldHooked(ma.Schema):
        class Meta:
            unknown = ma.EXCLUDE

        name = ma.fields.String(post_load=[str.upper])

    with pytest.raises(TypeError):
        FieldLoader(FieldHooked())
