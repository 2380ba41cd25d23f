"""Development-mode helpers behind the demo page: mint emulator tokens, play a sample call.

Both exist only in development mode (``FIREBASE_AUTH_EMULATOR_HOST`` set);
otherwise every ``/dev`` URL answers a JSON 404, so a production deployment
cannot mint tokens or fake calls.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import gevent
from flask import Blueprint, request

from webapp.auth import mint_emulator_token
from webapp.brokers.base import BrokerUnavailable
from webapp.config import normalise_email
from webapp.errors import error_response
from webapp.events import EventDraft, PublishError, utc_timestamp
from webapp.guards import current_identity
from webapp.realtime import Realtime, realtime

logger = logging.getLogger(__name__)

bp = Blueprint("dev", __name__, url_prefix="/dev")

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


@bp.before_request
def development_only() -> Any:
    """Hide every /dev URL outside development mode."""
    if not realtime().settings.development:
        return error_response(
            404, "Not found: /dev endpoints exist only in development mode "
            "(FIREBASE_AUTH_EMULATOR_HOST set)"
        )
    return None


def _json_object() -> dict[str, Any]:
    body = request.get_json(silent=True)
    return body if isinstance(body, dict) else {}


@bp.post("/token")
def token() -> Any:
    """Mint an unsigned emulator ID token: ``{"email"}`` -> ``{"token", "expiresAt"}``."""
    email = _json_object().get("email")
    if not isinstance(email, str) or not 3 <= len(email.strip()) <= 320 or "@" not in email:
        return error_response(400, "Body must be {\"email\": \"you@example.com\"}")
    settings = realtime().settings
    minted = mint_emulator_token(email.strip(), settings.project_id, TOKEN_TTL_SECONDS)
    return {
        "token": minted,
        "expiresAt": utc_timestamp(_expiry(minted)),
        "userId": normalise_email(email),
    }


def _expiry(token: str) -> float:
    """Read back the ``exp`` the token was minted with."""
    return realtime().verifier.verify(token).expires_at


@bp.post("/sample-call")
def sample_call() -> Any:
    """Play a fresh call of the caller through its statuses, one step at a time.

    Body (optional): ``{"outcome": "ended" | "failed", "stepSeconds": 1.2}``.
    Answers 202 at once; the events follow over the caller's sockets.
    """
    identity = current_identity()
    body = _json_object()
    outcome = body.get("outcome", "ended")
    if outcome not in OUTCOMES:
        return error_response(400, f"outcome must be one of {', '.join(OUTCOMES)}")
    step = body.get("stepSeconds", DEFAULT_STEP_SECONDS)
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        return error_response(400, "stepSeconds must be a number")
    step = min(max(float(step), STEP_BOUNDS[0]), STEP_BOUNDS[1])
    statuses, reason = OUTCOMES[outcome]
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
