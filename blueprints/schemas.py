"""Marshmallow schemas shared by the REST blueprints (documented in OpenAPI)."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import marshmallow as ma
from flask import Request
from marshmallow import validate
from webargs.flaskparser import FlaskParser

from webapp.events import STATUSES
from webapp.validation import (
    CALL_ID_PATTERN,
    CALL_ID_RULE,
    MAX_CALL_ID_LENGTH,
    MAX_DATA_BYTES,
    MAX_DEPTH,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_USER_ID_LENGTH,
)


class JsonBodyParser(FlaskParser):
    """webargs' parser, with every unreadable JSON body a 400 "Invalid JSON body".

    webargs turns only syntax errors into a 400; an integer of 5,000 digits
    (Python refuses to read more than 4,300) or a body nested thousands deep
    raised past it as a 500.
    """

    def _raw_load_json(self, req: Request) -> Any:
        try:
            return super()._raw_load_json(req)
        except json.JSONDecodeError:
            raise
        except (ValueError, RecursionError) as error:
            # A non-empty document: webargs reads an empty one as "no body".
            raise json.JSONDecodeError(f"Invalid JSON: {error}", "<body>", 0) from None


class EventSchema(ma.Schema):
    """One call status change, as a backend publishes it."""

    class Meta:
        unknown = ma.EXCLUDE

    callId = ma.fields.String(
        required=True,
        validate=[
            validate.Length(min=1, max=MAX_CALL_ID_LENGTH),
            validate.Regexp(CALL_ID_PATTERN, error=f"must be {CALL_ID_RULE}"),
        ],
        metadata={
            "description": "The provider's or your own call id; one segment of "
            f"/api/v6/call/<callId>/status, so it must be {CALL_ID_RULE}"
        },
    )
    userId = ma.fields.String(
        load_default=None, validate=validate.Length(min=1, max=MAX_USER_ID_LENGTH),
        metadata={
            "description": "Email of the call's owner; may be omitted once the owner is known"
        },
    )
    status = ma.fields.String(
        required=True, validate=validate.OneOf(STATUSES),
        metadata={"description": "One of " + ", ".join(STATUSES)},
    )
    data = ma.fields.Dict(
        load_default=dict,
        metadata={
            "description": "Free-form details delivered as the event's data: at most "
            f"{MAX_DATA_BYTES} bytes as JSON, nested at most {MAX_DEPTH} levels, finite "
            "numbers, valid Unicode text"
        },
    )
    idempotencyKey = ma.fields.String(
        load_default=None, validate=validate.Length(min=1, max=MAX_IDEMPOTENCY_KEY_LENGTH),
        metadata={
            "description": "Makes a retried publish a no-op for at least 5 minutes; "
            "scoped to the event's owner"
        },
    )
    timestamp = ma.fields.AwareDateTime(
        load_default=None, default_timezone=UTC,
        metadata={
            "description": "When the status changed (ISO 8601; UTC if no offset); "
            "delivered in UTC. Default: when received"
        },
    )


class FieldLoader:
    """Load objects with a flat schema's own fields, without ``Schema.load``'s bookkeeping.

    The same fields do the work (types, validators, defaults, required, the
    very same messages), field by field in declaration order, and unknown
    keys are left out (``unknown = EXCLUDE``); errors come as one
    ``ValidationError`` keyed by field, exactly as ``schema.load`` raises
    them. ``Schema.load`` spends about half of its time on per-field
    machinery a flat schema does not need (publishing 100 events per POST,
    bench/README.md). Each field goes through the steps of
    ``Field.deserialize`` (missing, default, null, ``_deserialize``, its
    validators), with its validators combined once here rather than on every
    value as ``Field._validate`` does. Only for schemas without hooks,
    ``data_key``, field-level ``pre_load``/``post_load`` or other ``unknown``
    settings; anything else is refused at start-up.
    """

    def __init__(self, schema: ma.Schema) -> None:
        hooks = [name for name, found in schema._hooks.items() if found]
        renamed = [n for n, f in schema.load_fields.items() if f.data_key not in (None, n)]
        hooked = [n for n, f in schema.load_fields.items() if f.pre_load or f.post_load]
        if hooks or renamed or hooked or schema.unknown != ma.EXCLUDE:
            raise TypeError(f"{type(schema).__name__} needs Schema.load (hooks {hooks}, "
                            f"data keys {renamed}, field hooks {hooked}, "
                            f"unknown={schema.unknown})")
        self._fields = [
            (name, field, validate.And(*field.validators) if field.validators else None)
            for name, field in schema.load_fields.items()
        ]

    def load(self, data: dict[str, Any]) -> dict[str, Any]:
        """Return the loaded fields of ``data``; raise ``ma.ValidationError`` like the schema."""
        loaded: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for name, field, validators in self._fields:
            value = data.get(name, ma.missing)
            try:
                field._validate_missing(value)  # required, or None where it is not allowed
                if value is ma.missing:
                    default = field.load_default
                    loaded[name] = default() if callable(default) else default
                elif value is None:  # allowed, or _validate_missing raised
                    loaded[name] = None
                else:
                    output = field._deserialize(value, name, data)
                    if validators is not None:
                        validators(output)
                    loaded[name] = output
            except ma.ValidationError as error:
                errors[name] = error.messages
        if errors:
            raise ma.ValidationError(errors)
        return loaded


class PublishAnswerSchema(ma.Schema):
    success = ma.fields.Boolean()
    message = ma.fields.String(metadata={"description": "What went wrong (partial batch)"})
    data = ma.fields.Raw(metadata={"description": "A result, or a list of results for a batch"})


class PublishFailureSchema(ma.Schema):
    success = ma.fields.Boolean(required=True, metadata={"description": "Always false"})
    message = ma.fields.String(required=True, metadata={"description": "What went wrong"})
    data = ma.fields.List(
        ma.fields.Raw(),
        metadata={"description": "Batch only: the results of the items before the failure"},
    )


class CallStatusSchema(ma.Schema):
    callId = ma.fields.String(metadata={"description": "The call"})
    status = ma.fields.String(metadata={"description": "Its latest status"})
    updatedAt = ma.fields.String(metadata={"description": "When it changed (ISO 8601 UTC)"})
    event = ma.fields.Raw(metadata={"description": "The latest event, exactly as delivered"})


class CallStatusAnswerSchema(ma.Schema):
    success = ma.fields.Boolean()
    data = ma.fields.Nested(CallStatusSchema)


class TestMessageSchema(ma.Schema):
    """The seed's test message request."""

    class Meta:
        unknown = ma.EXCLUDE

    targetUserId = ma.fields.String(required=True, validate=validate.Length(min=1, max=320))
    message = ma.fields.Raw(load_default="Test message from Callwire", allow_none=True)
    event = ma.fields.String(load_default="test.event", validate=validate.Length(min=1, max=128))


class SuccessSchema(ma.Schema):
    success = ma.fields.Boolean()
    message = ma.fields.String()
    data = ma.fields.Raw()
    delivered = ma.fields.Integer()

