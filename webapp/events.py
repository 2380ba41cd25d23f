"""The call event model: statuses, the forward-only rule, ids and the wire shape.

Every source (publish API, Vapi, Twilio) produces an :class:`EventDraft`;
a broker decides with :func:`judge` whether it moves the call forward, gives
it an id and turns it into the message of docs/protocol.md §3 with :func:`event_message`.
Keeping these rules here lets the in-process and Redis brokers apply exactly
the same ones (the Redis broker mirrors :func:`judge` in Lua).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

EVENT_NAME = "call.status.changed"

#: The five statuses frontends switch on, in the order a call moves through them.
STATUSES: tuple[str, ...] = ("initiated", "ringing", "in-progress", "ended", "failed")
TERMINAL: frozenset[str] = frozenset({"ended", "failed"})
RANK: dict[str, int] = {"initiated": 0, "ringing": 1, "in-progress": 2, "ended": 3, "failed": 3}

Verdict = Literal["accept", "duplicate", "stale"]


@dataclass(frozen=True)
class EventDraft:
    """A status change reported by a source, before a broker accepts it."""

    call_id: str
    status: str
    user_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: str | None = None
    idempotency_key: str | None = None
    #: Provider sequence number (Twilio ``SequenceNumber``); higher is newer.
    sequence: int | None = None


@dataclass(frozen=True)
class CallState:
    """What a broker remembers of one call."""

    call_id: str
    owner: str
    status: str
    updated_at: str
    event: dict[str, Any]
    sequence: int | None = None


@dataclass(frozen=True)
class PublishResult:
    """The answer to one publish, as the REST API reports it."""

    id: str | None
    delivered: int
    dropped: Literal["duplicate", "stale"] | None = None
    event: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """Render the ``data`` object of the publish answer (docs/protocol.md §10)."""
        body: dict[str, Any] = {"id": self.id, "delivered": self.delivered}
        if self.dropped:
            body["dropped"] = self.dropped
        return body


class PublishError(Exception):
    """A publish the broker refuses; ``status`` is the HTTP status to answer."""

    status = 400


class OwnershipConflict(PublishError):
    """The call is owned by another user than the one the event names."""

    status = 409


class UnknownOwner(PublishError):
    """The event names no owner and the call's owner is not known yet.

    409, not 400: the request is well formed (``userId`` is optional), it is
    the state of the call that refuses it, as with another user's call.
    """

    status = 409


def judge(previous: CallState | None, draft: EventDraft) -> Verdict:
    """Decide whether ``draft`` moves its call forward (docs/protocol.md §6).

    Same status again is a duplicate (provider retry, end-of-call-report after
    ``ended``); anything after a terminal status, a lower status, or a lower
    provider sequence number is stale.
    """
    if previous is None:
        return "accept"
    if draft.status == previous.status:
        return "duplicate"
    if previous.status in TERMINAL:
        return "stale"
    if (
        draft.sequence is not None
        and previous.sequence is not None
        and draft.sequence <= previous.sequence
    ):
        return "stale"
    if RANK[draft.status] <= RANK[previous.status]:
        return "stale"
    return "accept"


#: The last whole second formatted by :func:`utc_timestamp` and its text (one per second).
_formatted_second: tuple[int, str] = (-1, "")


def utc_timestamp(moment: float | None = None) -> str:
    """Format a moment as ISO 8601 UTC with milliseconds, like the seed.

    The same text as ``format_utc(datetime.fromtimestamp(moment, UTC))``
    (microseconds rounded half to even, as datetime does, then cut to
    milliseconds), but the date and time of day are formatted once per
    second: every accepted event needs a timestamp, and the datetime round
    trip was 5 % of the CPU of a batch publish (bench/README.md).
    """
    global _formatted_second
    now = time.time() if moment is None else moment
    seconds = math.floor(now)
    micros = round((now - seconds) * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    cached, text = _formatted_second
    if seconds != cached:
        # isoformat, not strftime: "%Y" is not zero-padded before the year 1000.
        text = datetime.fromtimestamp(seconds, tz=UTC).replace(tzinfo=None).isoformat()
        _formatted_second = (seconds, text)
    return f"{text}.{micros // 1000:03d}Z"


def format_utc(moment: datetime) -> str:
    """Format an aware datetime in UTC the way every event carries it (``…T18:41:38.130Z``)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def next_event_id(previous: str | None, now_us: int | None = None) -> str:
    """Return an id newer than ``previous``: the time in microseconds, or previous + 1.

    Ids are 16-digit decimal strings, so they compare the same as strings and
    as numbers, and stay increasing across restarts of the process.
    """
    now = time.time_ns() // 1000 if now_us is None else now_us
    last = event_id_order(previous) if previous is not None else -1
    return f"{max(now, last + 1):016d}"


def event_id_order(event_id: str | None) -> int:
    """Return a sortable key for an event id; -1 for anything that is not one."""
    if isinstance(event_id, str) and event_id.isdigit() and len(event_id) <= 20:
        return int(event_id)
    return -1


def event_message(
    event_id: str, draft: EventDraft, timestamp: str
) -> dict[str, Any]:
    """Build the message a client receives: the seed's shape plus ``id`` and ``timestamp``."""
    return {
        "event": EVENT_NAME,
        "callId": draft.call_id,
        "status": draft.status,
        "data": draft.data,
        "id": event_id,
        "timestamp": timestamp,
    }
