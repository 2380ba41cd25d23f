"""Vapi server messages in, call status events out (docs/protocol.md §6).

Vapi POSTs every server message of an assistant or phone number to one URL.
Only ``status-update`` and ``end-of-call-report`` say how a call stands; every
other type (transcripts, tool calls, speech updates, ...) is acknowledged
and dropped. The translation below is pure (payload in, draft or
:class:`Ignored` out) so it is tested without HTTP; the view authenticates,
finds the owner and publishes.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from flask import current_app, request
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
from webapp.bodies import read_body
from webapp.brokers.base import BrokerUnavailable
from webapp.events import EventDraft
from webapp.guards import secret_matches
from webapp.realtime import realtime

SOURCE = "vapi"

#: The message types that carry a call status; all others are acknowledged and ignored.
EVENT_TYPES: tuple[str, ...] = ("status-update", "end-of-call-report")

#: Vapi's call statuses and the seed status each one becomes.
STATUS_MAP: dict[str, str] = {
    "scheduled": "initiated",
    "queued": "initiated",
    "ringing": "ringing",
    "in-progress": "in-progress",
    "forwarding": "in-progress",
    "ended": "ended",
}

# --- endedReason: did the call ever connect? ----------------------------------
# Built from Vapi's endedReason catalogue. "failed" is for calls that never
# connected because something went wrong (setup error, provider refusal,
# transport never up). A busy line, an unanswered call, a caller who hangs up
# while it rings, a voicemail or any error *during* a connected call (the
# pipeline-error-* and call.in-progress.error-* families) is "ended": the
# call happened, or the callee chose not to take it (docs/webhooks.md).

_NEVER_CONNECTED_PREFIXES = ("call.start.error-", "call-start-error-")
_NEVER_CONNECTED_FRAGMENTS = ("failed-to-connect", "transport-never-connected")
_NEVER_CONNECTED_REASONS = frozenset({
    # The assistant could not be resolved, so nothing was dialled or answered.
    "assistant-not-found",
    "assistant-not-valid",
    "assistant-request-failed",
    "assistant-request-returned-error",
    "assistant-request-returned-unspeakable-error",
    "assistant-request-returned-invalid-assistant",
    "assistant-request-returned-no-assistant",
    "scheduled-call-deleted",
    "no-server-available",
    "license-check-failed",
    "call.in-progress.error-vapifault-worker-not-available",
    # The telephony provider refused or could not place the call.
    "phone-call-provider-bypass-enabled-but-no-call-received",
    "twilio-reported-customer-misdialed",
    "vonage-rejected",
})
#: Outbound SIP failures carry the SIP code; these codes mean the callee was
#: reached but did not pick up (timeout, unavailable, busy, declined), the
#: same as Twilio's busy / no-answer, so the call "ended". Any other code
#: (403 forbidden, 407 proxy auth, 503 unavailable, ...) never connected.
_OUTBOUND_SIP = re.compile(r"outbound-sip-(\d{3})")
_SIP_CALLEE_DID_NOT_ANSWER = frozenset({"408", "480", "486", "487", "600", "603"})


class NotAServerMessage(ValueError):
    """The body is not a Vapi server message (a JSON object with a ``message`` object)."""


def never_connected(ended_reason: str | None) -> bool:
    """Return True when Vapi's ``endedReason`` says the call never connected."""
    if not ended_reason:
        return False
    reason = ended_reason.strip().lower()
    if reason.startswith(_NEVER_CONNECTED_PREFIXES) or reason in _NEVER_CONNECTED_REASONS:
        return True
    if any(fragment in reason for fragment in _NEVER_CONNECTED_FRAGMENTS):
        return True
    sip = _OUTBOUND_SIP.search(reason)
    return sip is not None and sip.group(1) not in _SIP_CALLEE_DID_NOT_ANSWER


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def server_message(body: Any) -> dict[str, Any]:
    """Return the ``message`` object of a Vapi request body; raise :class:`NotAServerMessage`."""
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        raise NotAServerMessage(
            'Body must be a Vapi server message: a JSON object with a "message" object'
        )
    return body["message"]


def metadata_owner(call: dict[str, Any]) -> str | None:
    """Return the owner a call's metadata names (docs/webhooks.md order), normalised, or None.

    ``assistant.metadata`` is deliberately not read: an assistant serves the
    calls of many users, so a user named there is not the owner of this call.
    """
    overrides = _object(_object(call.get("assistantOverrides")).get("metadata"))
    return owner_email(overrides.get("userId")) or owner_email(
        _object(call.get("metadata")).get("userId")
    )


def translate(body: Any) -> EventDraft | Ignored:
    """Turn a Vapi server request into a draft (owner from metadata, if any) or an Ignored.

    Raises :class:`NotAServerMessage` when ``body`` is not a server message at all.
    """
    message = server_message(body)
    kind = message.get("type")
    if kind not in EVENT_TYPES:
        name = (text(kind) or "untyped")[:64]
        return Ignored("message-type", f"Vapi {name} messages carry no call status")
    call = _object(message.get("call"))
    call_id = text(call.get("id"))
    if call_id is None:
        return Ignored("no-call-id", f"Vapi {kind} message without call.id")
    ended_reason = text(message.get("endedReason")) or text(call.get("endedReason"))
    if kind == "status-update":
        provider_status = text(message.get("status")) or text(call.get("status"))
        status = STATUS_MAP.get(provider_status or "")
        if status is None:
            return Ignored(
                "unknown-status", f"Vapi status {shown(provider_status)} is not a call status"
            )
    else:
        # The report comes once the call is over; it has no status of its own.
        provider_status, status = "ended", "ended"
    if status == "ended" and never_connected(ended_reason):
        status = "failed"
    customer = _object(call.get("customer")) or _object(message.get("customer"))
    assistant = _object(message.get("assistant"))
    data = {
        "type": kind,
        "assistantId": text(call.get("assistantId")) or text(assistant.get("id")),
        "customerNumber": text(customer.get("number")),
        "endedReason": ended_reason,
        "providerStatus": provider_status,
    }
    return EventDraft(
        call_id=call_id,
        status=status,
        user_id=metadata_owner(call),
        data=data,
        timestamp=provider_time(message.get("timestamp")),
    )


def resolve_owner(draft: EventDraft, known_owner: str | None) -> EventDraft | Ignored:
    """Apply docs/webhooks.md's owner order: the known owner, else the one the metadata names."""
    if known_owner is not None:
        return replace(draft, user_id=known_owner)
    if draft.user_id is not None:
        return draft
    return Ignored(
        "unknown-owner",
        f"no owner for call {draft.call_id}: set assistantOverrides.metadata.userId "
        "when creating the call",
    )


# --- HTTP -----------------------------------------------------------------------

blp = Blueprint(
    "vapi_webhook", __name__, url_prefix="/api/v6/call/webhook",
    description="Vapi server messages: status-update and end-of-call-report become call events",
)


def _read(description: str, **properties: dict[str, Any]) -> dict[str, Any]:
    """Document a field the view reads without constraining it: Vapi may send any value.

    No ``type``: a value of another type (null, a number) is accepted and read
    as missing, exactly what the view does. ``properties`` apply to objects only.
    """
    return {"description": description, **({"properties": properties} if properties else {})}


_OWNER = _read("userId: email of the user who owns the call",
               userId=_read("Email of the user who owns the call"))

#: The request body as the view reads it: an object with a ``message`` object;
#: every other field is optional, of any type, and other fields are ignored.
VAPI_SERVER_MESSAGE = {
    "type": "object",
    "required": ["message"],
    "properties": {
        "message": {
            "type": "object",
            "properties": {
                "type": _read("status-update and end-of-call-report are published; "
                              "every other type is acknowledged and ignored"),
                "status": _read("status-update only: scheduled, queued, ringing, "
                                "in-progress, forwarding, ended"),
                "endedReason": _read(
                    "Why the call ended; a never-connected reason makes it failed"
                ),
                "timestamp": _read("Epoch milliseconds or ISO 8601"),
                "customer": _read("Used when call.customer is absent",
                                  number=_read("Customer phone number")),
                "assistant": _read("Used when call.assistantId is absent",
                                   id=_read("Assistant id")),
                "call": _read(
                    "The call",
                    id=_read("Vapi call id: the event's callId"),
                    assistantId=_read("data.assistantId"),
                    status=_read("Used when message.status is absent"),
                    endedReason=_read("Used when message.endedReason is absent"),
                    customer=_read("The customer",
                                   number=_read("Phone number (E.164): data.customerNumber")),
                    assistantOverrides=_read("metadata.userId names the owner (first choice)",
                                             metadata=_OWNER),
                    metadata=_read("userId names the owner (second choice)",
                                   userId=_read("Email of the user who owns the call")),
                ),
            },
        }
    },
}


def require_vapi_secret() -> None:
    """Abort unless X-Vapi-Secret or a bearer token equals VAPI_WEBHOOK_SECRET (404 when unset)."""
    expected = realtime().settings.vapi_webhook_secret
    if expected is None:
        abort(404, message="The Vapi webhook is disabled: set VAPI_WEBHOOK_SECRET to enable it")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    header_ok = secret_matches(request.headers.get("X-Vapi-Secret"), expected)
    bearer_ok = secret_matches(bearer, expected)
    if not (header_ok or bearer_ok):
        abort(401, message="Missing or wrong X-Vapi-Secret (or Authorization: Bearer) secret")


def known_owner(call_id: str) -> str | None:
    """Return the stored owner of a call, or None; abort 503 when the broker is down."""
    try:
        state = realtime().broker.call_state(call_id)
    except BrokerUnavailable:
        abort(503, message="Broker unavailable: event not accepted, retry shortly")
    return state.owner if state is not None else None


@blp.route("/vapi")
class VapiWebhook(MethodView):
    @blp.doc(
        security=[{"vapiSecret": []}, {"vapiBearer": []}],
        requestBody={
            "required": True,
            "content": {"application/json": {
                "schema": VAPI_SERVER_MESSAGE,
                "example": {"message": {
                    "type": "status-update",
                    "status": "in-progress",
                    "call": {
                        "id": "vapi-call-1",
                        "assistantId": "demo-assistant",
                        "customer": {"number": "+15550100"},
                        "metadata": {"userId": "you@example.com"},
                    },
                }},
            }},
        },
    )
    @blp.response(200, WebhookAnswerSchema)
    @blp.alt_response(400, description="Not JSON, or not a Vapi server message")
    @blp.alt_response(401, description="Missing or wrong secret")
    @blp.alt_response(404, description="Disabled: VAPI_WEBHOOK_SECRET is not set")
    @blp.alt_response(408, description="Body not received within HTTP_BODY_TIMEOUT")
    @blp.alt_response(413, description="Body over 8 MiB")
    @blp.alt_response(503, description="Broker unavailable; Vapi should retry")
    def post(self) -> dict[str, Any]:
        """Receive a Vapi server message; publish status-update and end-of-call-report."""
        require_vapi_secret()
        read_body(current_app.config["MAX_CONTENT_LENGTH"], realtime().settings.body_timeout)
        try:
            outcome = translate(request.get_json(force=True, silent=True))
        except NotAServerMessage as error:
            abort(400, message=str(error))
        if isinstance(outcome, Ignored):
            return ignore(SOURCE, outcome)
        resolved = resolve_owner(outcome, known_owner(outcome.call_id))
        if isinstance(resolved, Ignored):
            return ignore(SOURCE, resolved, outcome.call_id)
        return publish(resolved, SOURCE)
