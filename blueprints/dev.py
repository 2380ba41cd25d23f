"""Development-mode helpers: mint emulator tokens, play a sample call.

In development mode (``FIREBASE_AUTH_EMULATOR_HOST`` set) ``blp`` is
registered on the API, so Swagger UI at ``/docs`` lists both operations
under the *Development* tag: a tester mints a token there, presses
Authorize and tries every other endpoint without leaving the page.
Otherwise only ``off`` is registered, and every ``/dev`` URL answers a JSON
404, so a production deployment can neither mint tokens nor fake calls.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import gevent
import marshmallow as ma
from flask import Blueprint as FlaskBlueprint
from flask import g, request
from flask.views import MethodView
from flask_smorest import Blueprint

from webapp.auth import mint_emulator_token
from webapp.brokers.base import BrokerUnavailable
from webapp.config import normalise_email
from webapp.errors import error_response
from webapp.events import EventDraft, PublishError, utc_timestamp
from webapp.guards import current_identity
from webapp.realtime import Realtime, realtime

logger = logging.getLogger(__name__)

blp = Blueprint(
    "development", __name__, url_prefix="/dev",
    description="Development mode only: mint an emulator token (then press Authorize), "
    "play a sample call",
)

#: Registered instead of ``blp`` outside development mode.
off = FlaskBlueprint("dev_off", __name__, url_prefix="/dev")

#: Lifetime of a minted token, like a real Firebase ID token.
TOKEN_TTL_SECONDS = 3600
#: Pause between the statuses of a sample call: long enough to watch it ring.
DEFAULT_STEP_SECONDS = 1.2
STEP_BOUNDS = (0.05, 5.0)

#: The statuses a sample call goes through, and the data its last event carries.
OUTCOMES: dict[str, tuple[tuple[str, ...], str]] = {
    "ended": (("initiated", "ringing", "in-progress", "ended"), "customer-ended-call"),
    "failed": (("initiated", "ringing", "failed"), "twilio-failed-to-connect-call"),
}

#: The email every example in Swagger UI uses, so the examples work together.
EXAMPLE_EMAIL = "you@example.com"


@off.route("/", defaults={"rest": ""}, methods=["GET", "POST"])
@off.route("/<path:rest>", methods=["GET", "POST"])
def not_in_production(rest: str) -> Any:
    """Answer every /dev URL with a JSON 404 outside development mode."""
    return error_response(
        404, "Not found: /dev endpoints exist only in development mode "
        "(FIREBASE_AUTH_EMULATOR_HOST set)"
    )


def _valid_email(value: str) -> None:
    # The same rule as the document's minLength, maxLength and pattern (issue 11 #14).
    if not 3 <= len(value) <= 320 or "@" not in value:
        raise ma.ValidationError('must be an email, like {"email": "you@example.com"}')


class TokenRequestSchema(ma.Schema):
    """Who the minted token speaks for."""

    class Meta:
        unknown = ma.EXCLUDE

    email = ma.fields.String(
        required=True, validate=_valid_email,
        metadata={"description": "Any email: the token's email claim", "example": EXAMPLE_EMAIL,
                  "minLength": 3, "maxLength": 320, "pattern": "@"},
    )


class TokenAnswerSchema(ma.Schema):
    token = ma.fields.String(
        metadata={"description": "Unsigned emulator ID token: paste it into Authorize → "
                  "bearerAuth, or send it in a WebSocket init"}
    )
    expiresAt = ma.fields.String(metadata={"description": "When it expires (ISO 8601 UTC)"})
    userId = ma.fields.String(metadata={"description": "The normalised email"})


class SampleCallSchema(ma.Schema):
    """How the sample call goes."""

    class Meta:
        unknown = ma.EXCLUDE

    outcome = ma.fields.String(
        load_default="ended", validate=ma.validate.OneOf(tuple(OUTCOMES)),
        metadata={"description": "ended: rings, connects, ends; failed: never connects",
                  "example": "ended"},
    )
    stepSeconds = ma.fields.Float(
        load_default=DEFAULT_STEP_SECONDS, allow_nan=False,
        metadata={"description": f"Pause between statuses, {STEP_BOUNDS[0]}-{STEP_BOUNDS[1]} s",
                  "example": DEFAULT_STEP_SECONDS},
    )



class SampleCallAnswerSchema(ma.Schema):
    success = ma.fields.Boolean()
    data = ma.fields.Dict(
        metadata={"description": "callId, the statuses it will go through, stepSeconds"}
    )


@blp.before_request
def authenticate_sample_call() -> None:
    """Check the bearer token before the body: no identity is a 401, never a 400."""
    if request.endpoint == "development.SampleCall":
        g.identity = current_identity()


@blp.route("/token")
class Token(MethodView):
    @blp.arguments(TokenRequestSchema, error_status_code=400, example={"email": EXAMPLE_EMAIL})
    @blp.response(200, TokenAnswerSchema)
    @blp.alt_response(400, description="Not an email")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Mint an unsigned emulator ID token for any email (development mode only).

        Copy `token`, press **Authorize** and paste it under `bearerAuth`; the
        publish key goes under `apiKeyAuth` (`dev-events-key` with `make run`).
        """
        email = body["email"].strip()
        settings = realtime().settings
        minted = mint_emulator_token(email, settings.project_id, TOKEN_TTL_SECONDS)
        return {
            "token": minted,
            "expiresAt": utc_timestamp(realtime().verifier.verify(minted).expires_at),
            "userId": normalise_email(email),
        }


@blp.route("/sample-call")
class SampleCall(MethodView):
    @blp.doc(security=[{"bearerAuth": []}])
    @blp.arguments(
        SampleCallSchema, error_status_code=400, required=False,  # every field has a default
        example={"outcome": "ended", "stepSeconds": DEFAULT_STEP_SECONDS},
    )
    @blp.response(202, SampleCallAnswerSchema)
    @blp.alt_response(400, description="Unknown outcome or stepSeconds not a number")
    @blp.alt_response(401, description="Missing or invalid token")
    def post(self, body: dict[str, Any]) -> Any:
        """Play a fresh call of the caller through its statuses, one step at a time.

        Answers 202 at once; the events follow over the caller's sockets.
        """
        identity = g.identity
        step = min(max(float(body["stepSeconds"]), STEP_BOUNDS[0]), STEP_BOUNDS[1])
        statuses, reason = OUTCOMES[body["outcome"]]
        call_id = f"demo-{uuid.uuid4().hex[:12]}"
        gevent.spawn(_play, realtime(), identity.email, call_id, statuses, reason, step)
        return {
            "success": True,
            "data": {"callId": call_id, "statuses": list(statuses), "stepSeconds": step},
        }, 202


def _play(
    node: Realtime, user_id: str, call_id: str, statuses: tuple[str, ...], reason: str, step: float
) -> None:
    """Publish each status of the sample call, pausing ``step`` seconds between them."""
    for index, status in enumerate(statuses):
        if index:
            gevent.sleep(step)
        data: dict[str, Any] = {
            "type": "status-update",
            "assistantId": "demo-assistant",
            "customerNumber": "+15550100",
            "providerStatus": status,
        }
        if index == len(statuses) - 1:
            data["endedReason"] = reason
        try:
            node.publish(EventDraft(call_id, status, user_id, data), source="demo")
        except (BrokerUnavailable, PublishError) as failure:
            logger.warning("sample call %s stopped at %s: %s", call_id, status, failure)
            return
        except Exception:
            logger.exception("sample call %s failed at %s", call_id, status)
            return
