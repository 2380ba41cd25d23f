"""What the provider webhooks share: the ignore verdict, provider times, publish and answer.

A webhook is a *source*: it turns a provider's message into an
:class:`~webapp.events.EventDraft` (or decides there is nothing to publish)
and hands it to the same ``realtime().publish`` path as the REST API, so
ordering, dedup, history and resume apply unchanged. Providers retry any
answer that is not 2xx, so everything a retry cannot fix (a message type we
do not track, an owner we cannot find, an owner conflict) is acknowledged
with 200 and logged; only a broker outage, which a retry does fix, is a 503.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import marshmallow as ma
from flask_smorest import abort

from webapp import metrics
from webapp.brokers.base import BrokerUnavailable
from webapp.config import normalise_email
from webapp.events import EventDraft, OwnershipConflict, PublishError, UnknownOwner, utc_timestamp
from webapp.realtime import realtime

logger = logging.getLogger(__name__)

#: Below this a numeric provider time is taken as seconds, above as milliseconds
#: (1e11 ms is March 1973; 1e11 s is the year 5138).
_SECONDS_LIMIT = 1e11


@dataclass(frozen=True)
class Ignored:
    """A well-formed provider message that publishes nothing, and why."""

    #: Short code for the answer: message-type, unknown-status, no-call-id,
    #: unknown-owner, ownership-conflict, refused.
    reason: str
    detail: str


class WebhookResultSchema(ma.Schema):
    id = ma.fields.String(
        allow_none=True, metadata={"description": "Event id; null when nothing was published"}
    )
    delivered = ma.fields.Integer(metadata={"description": "Connections reached"})
    dropped = ma.fields.String(
        metadata={"description": "duplicate or stale, when dropped by the ordering rules"}
    )
    ignored = ma.fields.String(
        metadata={"description": "Why nothing was published: message-type, unknown-status, "
                  "no-call-id, unknown-owner, ownership-conflict, refused"}
    )


class WebhookAnswerSchema(ma.Schema):
    """The answer to every accepted webhook (always 200, so the provider stops retrying)."""

    success = ma.fields.Boolean()
    message = ma.fields.String(metadata={"description": "Why the message was ignored, if it was"})
    data = ma.fields.Nested(WebhookResultSchema)


def text(value: Any) -> str | None:
    """Return ``value`` if it is a non-empty string, else None (payloads may hold anything)."""
    return value if isinstance(value, str) and value.strip() else None


def shown(value: str | None, limit: int = 64) -> str:
    """Quote a provider's value for an answer or a log line, cut to ``limit`` characters."""
    if value is None:
        return "None"
    return repr(value[:limit]) + ("…" if len(value) > limit else "")


def owner_email(value: Any) -> str | None:
    """Return the normalised email a payload names as owner, or None."""
    if not isinstance(value, str):
        return None
    return normalise_email(value) or None


def provider_time(value: Any) -> str | None:
    """Return a provider's moment in the events' ISO 8601 UTC format, or None if unreadable.

    Accepts epoch milliseconds (Vapi), epoch seconds, numeric strings,
    ISO 8601 strings (naive means UTC) and RFC 2822 dates (Twilio's
    ``Timestamp``).
    """
    moment: datetime | None = None
    try:
        if isinstance(value, bool):
            return None
        if isinstance(value, str):
            raw = value.strip()
            try:
                value = float(raw)
            except ValueError:
                moment = _parse_date(raw)
        if isinstance(value, int | float):
            if not math.isfinite(value):
                return None
            seconds = value if abs(value) < _SECONDS_LIMIT else value / 1000
            moment = datetime.fromtimestamp(seconds, tz=UTC)
        if moment is None:
            return None
        return utc_timestamp(moment.timestamp())
    except (OverflowError, OSError, ValueError):
        return None


def _parse_date(raw: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        try:
            moment = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def ignore(source: str, verdict: Ignored, call_id: str | None = None) -> dict[str, Any]:
    """Log an ignored message and build its 200 answer."""
    metrics.EVENTS_IN.labels(source, "ignored").inc()
    level = logging.DEBUG if verdict.reason == "message-type" else logging.INFO
    logger.log(level, "%s webhook ignored (%s) call=%s: %s",
               source, verdict.reason, call_id, verdict.detail)
    return _ignored_answer(verdict)


def _ignored_answer(verdict: Ignored) -> dict[str, Any]:
    return {
        "success": True,
        "message": f"Ignored: {verdict.detail}",
        "data": {"id": None, "delivered": 0, "ignored": verdict.reason},
    }


def publish(draft: EventDraft, source: str) -> dict[str, Any]:
    """Publish a provider's draft and build the answer; abort 503 when the broker is down.

    Refusals are acknowledged, not reported as errors: a retry of the same
    message would be refused again, so a non-2xx answer would only make the
    provider retry (and alert) for nothing. The event is never delivered.
    """
    try:
        result = realtime().publish(draft, source=source)
    except BrokerUnavailable:
        abort(503, message="Broker unavailable: event not accepted, retry shortly")
    except UnknownOwner:
        verdict = Ignored("unknown-owner", f"the owner of call {draft.call_id} is not known")
        logger.info("%s webhook for call %s ignored: owner unknown", source, draft.call_id)
        return _ignored_answer(verdict)
    except OwnershipConflict:
        verdict = Ignored(
            "ownership-conflict",
            f"call {draft.call_id} belongs to another user than the one this message names",
        )
        logger.warning("%s webhook for call %s refused: it names user %s but the call "
                       "belongs to another user", source, draft.call_id, draft.user_id)
        return _ignored_answer(verdict)
    except PublishError as refusal:
        # InvalidEvent among others: the same rules as POST /events, checked in Realtime.
        logger.warning("%s webhook for call %s refused: %s", source, shown(draft.call_id), refusal)
        return _ignored_answer(Ignored("refused", str(refusal)))
    return {"success": True, "data": result.as_json()}
