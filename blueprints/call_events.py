"""Server-to-server publishing of call events, and a call's latest status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from blueprints.schemas import (
    CallStatusAnswerSchema,
    EventSchema,
    FieldLoader,
    PublishAnswerSchema,
    PublishFailureSchema,
)
from webapp.bodies import read_body
from webapp.brokers.base import BatchInterrupted, BrokerUnavailable, Outcome
from webapp.config import normalise_email
from webapp.events import EventDraft, PublishError, format_utc
from webapp.guards import current_identity, require_api_key
from webapp.realtime import Realtime, realtime

MAX_BATCH = 500

blp = Blueprint(
    "call_events", __name__, url_prefix="/api/v6/call",
    description="Publish call status changes; read a call's latest status",
)

_event_loader = FieldLoader(EventSchema())


def doc_only(decorator: Callable[[Callable[..., Any]], Any]) -> Callable[..., Any]:
    """Apply a flask-smorest decorator for its documentation alone, without its wrapper.

    The OpenAPI document is built from the ``_apidoc`` each decorator leaves on
    the view, so it is unchanged; what goes is one wrapper call and one
    ``current_app`` lookup per decorator per request (nine on the publish
    endpoint, about 6 % of a one-event POST, bench/README.md), and the
    response schema's dump, which is the identity for what the view returns.
    """

    def apply(view: Callable[..., Any]) -> Callable[..., Any]:
        view._apidoc = decorator(view)._apidoc  # type: ignore[attr-defined]
        return view

    return apply


def draft_from(item: Any) -> EventDraft:
    """Validate one published object into a draft; raise ``ma.ValidationError``."""
    if not isinstance(item, dict):
        raise ma.ValidationError("each event must be a JSON object")
    body = _event_loader.load(item)
    user_id = normalise_email(body["userId"]) if body["userId"] is not None else None
    if user_id == "":
        raise ma.ValidationError({"userId": ["must be an email, not blank"]})
    timestamp = body["timestamp"]
    if timestamp is not None:
        try:
            timestamp = format_utc(timestamp)
        except OverflowError:
            # 0001-01-01T00:04:00+02:00 is still year 0 in UTC: not a datetime.
            raise ma.ValidationError(
                {"timestamp": ["must fall between the years 1 and 9999 in UTC"]}
            ) from None
    return EventDraft(
        call_id=body["callId"],
        status=body["status"],
        user_id=user_id,
        data=body["data"],
        timestamp=timestamp,
        idempotency_key=body["idempotencyKey"],
    )


def _json_or_none(raw: bytes) -> Any:
    """Decode a body as ``request.get_json(force=True, silent=True)`` does, from its bytes."""
    try:
        return current_app.json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8/16/32 text
        return None


def _validation_message(error: ma.ValidationError) -> str:
    messages = error.messages
    if isinstance(messages, dict):
        return "Invalid event: " + "; ".join(
            f"{field}: {' '.join(map(str, problems)) if isinstance(problems, list) else problems}"
            for field, problems in messages.items()
        )
    return "Invalid event: " + " ".join(map(str, messages))


def _answer(outcome: Outcome) -> tuple[int, dict[str, Any]]:
    """Return (HTTP status, result object) for one published draft."""
    if isinstance(outcome, PublishError):
        return outcome.status, {"success": False, "message": str(outcome)}
    return 200, {"success": True, **outcome.as_json()}


def _publish_one(node: Realtime, item: Any) -> tuple[int, dict[str, Any]]:
    """Publish one item; return (HTTP status, result object)."""
    try:
        draft = draft_from(item)
    except ma.ValidationError as error:
        return 400, {"success": False, "message": _validation_message(error)}
    try:
        return _answer(node.publish(draft, source="api"))
    except PublishError as refusal:
        return _answer(refusal)


#: Swagger UI's ready-to-send bodies: the first is what "Try it out" fills in.
PUBLISH_EXAMPLES = {
    "one event": {
        "summary": "One status change (registers the call's owner)",
        "value": {
            "callId": "call-1",
            "userId": "you@example.com",
            "status": "ringing",
            "data": {"customerNumber": "+15550100"},
        },
    },
    "batch": {
        "summary": "A batch, handled in order",
        "value": [
            {"callId": "call-2", "userId": "you@example.com", "status": "initiated"},
            {"callId": "call-2", "status": "ringing"},
        ],
    },
}


@blp.route("/events", methods=["POST"])
@doc_only(blp.doc(
    security=[{"apiKeyAuth": []}],
    requestBody={
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        EventSchema,
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_BATCH,
                            # Not the Event schema: each item is judged on its own,
                            # and an invalid one gets its own 400 in the results.
                            "items": {
                                "description": "An Event object; an item that is not "
                                "one is answered with its own 400 result, the others "
                                "are published"
                            },
                        },
                    ]
                },
                "examples": PUBLISH_EXAMPLES,
            }
        },
    },
))
@doc_only(blp.response(200, PublishAnswerSchema))
@doc_only(blp.alt_response(400, description="Invalid event or batch"))
@doc_only(blp.alt_response(401, description="Missing or wrong X-API-Key"))
@doc_only(blp.alt_response(408, description="Body not received within HTTP_BODY_TIMEOUT"))
@doc_only(blp.alt_response(413, description="Body over 8 MiB"))
@doc_only(blp.alt_response(
    409, description="The call belongs to another user, or the event has no userId "
    "and the call's owner is not known yet",
))
@doc_only(blp.alt_response(
    503, schema=PublishFailureSchema,
    description="Broker unavailable; retry (a batch lists the results before the failure)",
))
def publish_events() -> Any:
    """Publish one call status change, or a batch of up to 500 in order."""
    # A plain view function, not a MethodView: one dispatch layer less per
    # request for the busiest endpoint (bench/README.md, issue 10).
    require_api_key()
    node = realtime()
    raw = read_body(current_app.config["MAX_CONTENT_LENGTH"], node.settings.body_timeout)
    body = _json_or_none(raw)  # any Content-Type: backends vary
    if body is None:
        abort(400, message="Body must be a JSON event object or an array of them")
    try:
        if isinstance(body, list):
            return _publish_batch(node, body)
        status, result = _publish_one(node, body)
    except BrokerUnavailable:
        abort(503, message="Broker unavailable: event not accepted, retry shortly")
    if status != 200:
        abort(status, message=result["message"])
    result.pop("success")
    return {"success": True, "data": result}


def _publish_batch(node: Realtime, items: list[Any]) -> Any:
    """Publish a batch; one result per item, or a 503 listing the results before a failure."""
    if not 1 <= len(items) <= MAX_BATCH:
        abort(400, message=f"A batch holds 1 to {MAX_BATCH} events, not {len(items)}")
    # Each item is handled as if posted alone, in order: invalid items are
    # answered here and never reach the broker, which takes the valid ones
    # in one call (a few round trips on Redis).
    results: list[dict[str, Any] | None] = [None] * len(items)
    drafts: list[EventDraft] = []
    positions: list[int] = []
    for index, item in enumerate(items):
        try:
            drafts.append(draft_from(item))
            positions.append(index)
        except ma.ValidationError as error:
            results[index] = {"code": 400, "success": False,
                              "message": _validation_message(error)}
    try:
        outcomes = node.publish_batch(drafts, source="api") if drafts else []
        interrupted = False
    except BatchInterrupted as interruption:
        outcomes, interrupted = interruption.outcomes, True
    except BrokerUnavailable:
        outcomes, interrupted = [], True
    for position, outcome in zip(positions, outcomes, strict=False):
        status, result = _answer(outcome)
        results[position] = {"code": status, **result}
    if interrupted:
        # Items before this one were answered; say which, so a retry can skip them.
        index = positions[len(outcomes)]
        return {
            "success": False,
            "message": f"Broker unavailable at item {index}: "
            "items before it were accepted, retry the rest",
            "data": results[:index],
        }, 503
    return {"success": True, "data": results}


@blp.route(
    "/<string:call_id>/status",
    parameters=[{"in": "path", "name": "call_id", "example": "call-1",
                 "description": "The call's id, as published"}],
)
class CallStatus(MethodView):
    @blp.doc(security=[{"bearerAuth": []}])
    @blp.response(200, CallStatusAnswerSchema)
    @blp.alt_response(401, description="Missing or invalid token")
    @blp.alt_response(403, description="The call belongs to another user")
    @blp.alt_response(404, description="Unknown call")
    def get(self, call_id: str) -> dict[str, Any]:
        """Return the latest status of a call, to its owner only."""
        identity = current_identity()
        try:
            state = realtime().broker.call_state(call_id)
        except BrokerUnavailable:
            abort(503, message="Broker unavailable: retry shortly")
        if state is None:
            abort(404, message=f"Unknown call: {call_id}")
        if state.owner != identity.email:
            abort(403, message="This call belongs to another user")
        return {
            "success": True,
            "data": {
                "callId": state.call_id,
                "status": state.status,
                "updatedAt": state.updated_at,
                "event": state.event,
            },
        }
