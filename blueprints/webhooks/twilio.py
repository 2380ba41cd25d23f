"""Twilio voice status callbacks in, call status events out (docs/protocol.md §6).

Point a call's ``statusCallback`` here, with ``?userId=<owner email>`` on the
URL (Twilio signs the query string too). Twilio sends one form-encoded
callback per subscribed event; they may arrive out of order, so each draft
carries Twilio's ``SequenceNumber`` and the broker drops anything older than
what the call already reached. The translation is pure; the view validates
the signature and publishes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import marshmallow as ma
from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from blueprints.webhooks.source import (
    Ignored,
    WebhookAnswerSchema,
    ignore,
    owner_email,
    provider_time,
    publish,
    shown,
    text,
)
from blueprints.webhooks.twilio_signature import expected_signature, public_url, signature_valid
from webapp.bodies import read_body
from webapp.config import MAKE_RUN_DEFAULTS
from webapp.events import EventDraft
from webapp.realtime import realtime

logger = logging.getLogger(__name__)

SOURCE = "twilio"

#: Largest status callback body accepted: Twilio's are about 1-2 KB of form fields.
MAX_CALLBACK_BYTES = 64 * 1024

#: ``data.type`` of events made from Twilio callbacks.
DATA_TYPE = "twilio-status-callback"

#: Twilio's ``CallStatus`` values and the seed status each one becomes.
STATUS_MAP: dict[str, str] = {
    "queued": "initiated",
    "initiated": "initiated",
    "ringing": "ringing",
    "in-progress": "in-progress",
    "completed": "ended",
    "busy": "ended",
    "no-answer": "ended",
    "canceled": "ended",
    "failed": "failed",
}

#: ``data.endedReason`` for final statuses, in Vapi's vocabulary (the seed's).
ENDED_REASONS: dict[str, str] = {
    "busy": "customer-busy",
    "no-answer": "customer-did-not-answer",
    "canceled": "manually-canceled",
}

#: ``Direction`` values of calls placed *to* the customer's number from elsewhere.
_INBOUND_DIRECTIONS = frozenset({"inbound", "trunking-originating"})


def _count(value: Any) -> int | None:
    """Return a non-negative whole number from a form value, or None."""
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def customer_number(params: Mapping[str, str]) -> str | None:
    """Return the customer's number: the caller for inbound calls, the callee otherwise."""
    direction = (text(params.get("Direction")) or "").lower()
    field = "From" if direction in _INBOUND_DIRECTIONS else "To"
    return text(params.get(field))


def translate(params: Mapping[str, str], owner: str | None) -> EventDraft | Ignored:
    """Turn one status callback's parameters into a draft for ``owner`` (None: known owner)."""
    call_id = text(params.get("CallSid"))
    if call_id is None:
        return Ignored("no-call-id", "Twilio callback without CallSid")
    provider_status = text(params.get("CallStatus"))
    status = STATUS_MAP.get((provider_status or "").strip().lower())
    if status is None:
        return Ignored(
            "unknown-status", f"Twilio CallStatus {shown(provider_status)} is not a call status"
        )
    data: dict[str, Any] = {
        "type": DATA_TYPE,
        "customerNumber": customer_number(params),
        "endedReason": ENDED_REASONS.get(provider_status.strip().lower()),
        "providerStatus": provider_status,
    }
    if (duration := _count(params.get("CallDuration"))) is not None:
        data["callDuration"] = duration
    if (sip_code := _count(params.get("SipResponseCode"))) is not None:
        data["sipResponseCode"] = sip_code
    return EventDraft(
        call_id=call_id,
        status=status,
        user_id=owner,
        data=data,
        timestamp=provider_time(params.get("Timestamp")),
        sequence=_count(params.get("SequenceNumber")),
    )


# --- HTTP -----------------------------------------------------------------------

blp = Blueprint(
    "twilio_webhook", __name__, url_prefix="/api/v6/call/webhook",
    description="Twilio voice status callbacks become call events",
)


#: One ringing callback, every field filled: Swagger UI sends each field it
#: shows, so each needs an example for the form to be signable.
EXAMPLE_FORM = {
    "CallSid": "CA-example-1", "CallStatus": "ringing", "SequenceNumber": "1",
    "Direction": "outbound-api", "From": "+15550199", "To": "+15550100",
    "Timestamp": "Tue, 01 Dec 2026 00:00:00 +0000", "CallDuration": "0",
    "SipResponseCode": "180",
}
#: Its signature with make run's TWILIO_AUTH_TOKEN, as Swagger UI sends it from /docs.
EXAMPLE_URL = "http://127.0.0.1:3000/api/v6/call/webhook/twilio?userId=you%40example.com"
EXAMPLE_SIGNATURE = expected_signature(
    MAKE_RUN_DEFAULTS["TWILIO_AUTH_TOKEN"], EXAMPLE_URL, EXAMPLE_FORM.items()
)


class TwilioStatusCallbackSchema(ma.Schema):
    """The form parameters Callwire reads (Twilio sends more; all are signed).

    All are text, as in any form; a value that is not what Twilio sends is read
    as missing, never refused (a refusal would only make Twilio retry).
    """

    class Meta:
        unknown = ma.EXCLUDE

    CallSid = ma.fields.String(
        metadata={"description": "The event's callId", "example": EXAMPLE_FORM["CallSid"]}
    )
    CallStatus = ma.fields.String(
        metadata={"description": "queued, initiated, ringing, in-progress, completed, busy, "
                  "no-answer, canceled, failed (data.providerStatus)",
                  "example": EXAMPLE_FORM["CallStatus"]}
    )
    SequenceNumber = ma.fields.String(
        metadata={"description": "Digits: order of the callbacks of one call; older ones "
                  "are dropped", "example": EXAMPLE_FORM["SequenceNumber"]}
    )
    Direction = ma.fields.String(
        metadata={"description": "inbound: customerNumber is From; otherwise To",
                  "example": EXAMPLE_FORM["Direction"]}
    )
    From = ma.fields.String(metadata={"example": EXAMPLE_FORM["From"]})
    To = ma.fields.String(metadata={"example": EXAMPLE_FORM["To"]})
    Timestamp = ma.fields.String(
        metadata={"description": "RFC 2822 time of the status change",
                  "example": EXAMPLE_FORM["Timestamp"]}
    )
    CallDuration = ma.fields.String(
        metadata={"description": "Digits: seconds, on completed calls",
                  "example": EXAMPLE_FORM["CallDuration"]}
    )
    SipResponseCode = ma.fields.String(
        metadata={"description": "Digits", "example": EXAMPLE_FORM["SipResponseCode"]}
    )


def require_twilio_signature() -> None:
    """Abort unless X-Twilio-Signature is valid for the public URL and form (404 when unset)."""
    token = realtime().settings.twilio_auth_token
    if token is None:
        abort(404, message="The Twilio webhook is disabled: set TWILIO_AUTH_TOKEN to enable it")
    presented = request.headers.get("X-Twilio-Signature")
    if not presented:
        # Checked before the body is read: an unsigned request costs nothing.
        logger.warning("twilio webhook: missing X-Twilio-Signature")
        abort(401, message="Missing or wrong X-Twilio-Signature")
    read_body(MAX_CALLBACK_BYTES, realtime().settings.body_timeout)
    url = public_url(request.environ)
    if not signature_valid(token, url, request.form.items(multi=True), presented):
        logger.warning("twilio webhook: %s X-Twilio-Signature for %s",
                       "wrong" if presented else "missing", url)
        abort(401, message="Missing or wrong X-Twilio-Signature")


@blp.route("/twilio")
class TwilioWebhook(MethodView):
    @blp.doc(
        security=[{"twilioSignature": []}],
        description=(
            "Try it from /docs under make run (http://127.0.0.1:3000): Authorize "
            f"`twilioSignature` with `{EXAMPLE_SIGNATURE}`; the example form with "
            "userId you@example.com is then signed as Twilio signs it."
        ),
        parameters=[{
            "in": "query",
            "name": "userId",
            "schema": {"type": "string"},
            "example": "you@example.com",
            "description": "Email of the call's owner; optional once the call's owner is known",
        }],
        requestBody={
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": TwilioStatusCallbackSchema,
                    "example": EXAMPLE_FORM,
                }
            },
        },
    )
    @blp.response(200, WebhookAnswerSchema)
    @blp.alt_response(401, description="Missing or wrong X-Twilio-Signature")
    @blp.alt_response(404, description="Disabled: TWILIO_AUTH_TOKEN is not set")
    @blp.alt_response(408, description="Body not received within HTTP_BODY_TIMEOUT")
    @blp.alt_response(413, description="Body over 64 KiB")
    @blp.alt_response(503, description="Broker unavailable; Twilio should retry")
    def post(self) -> dict[str, Any]:
        """Receive a Twilio voice status callback and publish it as a call event."""
        require_twilio_signature()
        outcome = translate(request.form, owner_email(request.args.get("userId")))
        if isinstance(outcome, Ignored):
            return ignore(SOURCE, outcome, text(request.form.get("CallSid")))
        return publish(outcome, SOURCE)
