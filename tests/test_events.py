"""Unit tests of the event model: the forward-only rule, event ids, timestamps, the wire shape."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from webapp.events import (
    EVENT_NAME,
    STATUSES,
    CallState,
    EventDraft,
    PublishResult,
    event_id_order,
    event_message,
    format_utc,
    judge,
    next_event_id,
    utc_timestamp,
)

ISO_UTC_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

# Written out by hand from docs/protocol.md §6 (initiated < ringing < in-progress < ended|failed;
# same status again is a duplicate; a lower status or anything after a terminal is stale).
# Rows: the call's current status; columns: the status that arrives.
VERDICTS = """
               initiated  ringing    in-progress ended      failed
initiated      duplicate  accept     accept      accept     accept
ringing        stale      duplicate  accept      accept     accept
in-progress    stale      stale      duplicate   accept     accept
ended          stale      stale      stale       duplicate  stale
failed         stale      stale      stale       stale      duplicate
"""


def verdict_table() -> list[tuple[str, str, str]]:
    rows = [line.split() for line in VERDICTS.strip().splitlines()]
    arriving = rows[0]
    return [(row[0], arriving[i], verdict) for row in rows[1:] for i, verdict in enumerate(row[1:])]


def state(status: str, sequence: int | None = None) -> CallState:
    return CallState("call-1", "owner@example.com", status, "2025-01-01T00:00:00.000Z", {},
                     sequence)


def draft(status: str, sequence: int | None = None) -> EventDraft:
    return EventDraft("call-1", status, "owner@example.com", sequence=sequence)


def test_the_verdict_table_covers_every_pair_of_the_five_statuses():
    pairs = {(current, arriving) for current, arriving, _ in verdict_table()}
    assert pairs == {(a, b) for a in STATUSES for b in STATUSES}


@pytest.mark.parametrize(("current", "arriving", "expected"), verdict_table())
def test_judge_every_pair_of_statuses(current, arriving, expected):
    assert judge(state(current), draft(arriving)) == expected


@pytest.mark.parametrize("status", STATUSES)
def test_first_event_of_a_call_is_always_accepted(status):
    assert judge(None, draft(status)) == "accept"


@pytest.mark.parametrize("terminal", ["ended", "failed"])
def test_same_terminal_twice_is_a_duplicate_not_stale(terminal):
    # end-of-call-report after status-update: ended must say "duplicate".
    assert judge(state(terminal), draft(terminal)) == "duplicate"


@pytest.mark.parametrize(
    ("terminal", "arriving"),
    [(t, a) for t in ("ended", "failed") for a in STATUSES if a != t],
)
def test_anything_else_after_a_terminal_status_is_stale(terminal, arriving):
    assert judge(state(terminal), draft(arriving)) == "stale"


def test_lower_provider_sequence_is_stale_even_for_a_later_status():
    # Twilio callbacks arrive out of order; SequenceNumber decides.
    assert judge(state("ringing", sequence=5), draft("in-progress", sequence=4)) == "stale"


def test_higher_provider_sequence_with_a_later_status_is_accepted():
    assert judge(state("ringing", sequence=5), draft("in-progress", sequence=6)) == "accept"


def test_higher_sequence_does_not_let_a_status_go_backwards():
    assert judge(state("in-progress", sequence=5), draft("ringing", sequence=9)) == "stale"


def test_same_status_with_another_sequence_is_a_duplicate():
    assert judge(state("ringing", sequence=5), draft("ringing", sequence=6)) == "duplicate"
    assert judge(state("ringing", sequence=5), draft("ringing", sequence=2)) == "duplicate"


@pytest.mark.parametrize(("previous", "arriving"), [(None, 3), (3, None)])
def test_a_missing_sequence_on_either_side_falls_back_to_status_order(previous, arriving):
    assert judge(state("ringing", previous), draft("in-progress", arriving)) == "accept"
    assert judge(state("ringing", previous), draft("initiated", arriving)) == "stale"


# -- event ids ---------------------------------------------------------------------------------


def test_first_id_is_the_clock_in_microseconds_as_16_digits():
    assert next_event_id(None, now_us=1_737_916_898_130_000) == "1737916898130000"


def test_ids_are_fixed_width_even_for_a_small_clock():
    assert next_event_id(None, now_us=42) == "0000000000000042"
    assert next_event_id("0000000000000042", now_us=7) == "0000000000000043"


def test_ids_follow_the_clock_when_it_moves_forward():
    assert next_event_id("1737916898130000", now_us=1_737_916_898_200_000) == "1737916898200000"


def test_ids_still_increase_when_the_clock_repeats():
    first = next_event_id(None, now_us=1_737_916_898_130_000)
    second = next_event_id(first, now_us=1_737_916_898_130_000)
    third = next_event_id(second, now_us=1_737_916_898_130_000)
    assert first < second < third
    assert int(third) - int(first) == 2


def test_ids_still_increase_when_the_clock_goes_backwards():
    previous = "1737916898130000"
    later = next_event_id(previous, now_us=1_737_916_000_000_000)  # clock stepped back ~15 min
    assert later == "1737916898130001"


def test_ids_from_the_real_clock_increase_as_strings_and_as_numbers():
    ids: list[str] = []
    previous = None
    for _ in range(2000):
        previous = next_event_id(previous)
        ids.append(previous)
    assert all(len(i) == 16 and i.isdigit() for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    assert abs(int(ids[0]) - now_us) < 60_000_000  # it is the clock, not a counter from 0


@pytest.mark.parametrize(
    ("value", "order"),
    [("1737916898130000", 1737916898130000), ("0000000000000042", 42), (None, -1),
     ("", -1), ("abc", -1), ("12a", -1), ("-5", -1), ("1" * 21, -1), (17, -1)],
)
def test_event_id_order(value, order):
    assert event_id_order(value) == order


# -- timestamps --------------------------------------------------------------------------------


def test_utc_timestamp_has_the_seed_format():
    assert utc_timestamp(1_737_916_898.130) == "2025-01-26T18:41:38.130Z"
    assert utc_timestamp(0) == "1970-01-01T00:00:00.000Z"


def test_utc_timestamp_defaults_to_now():
    stamp = utc_timestamp()
    assert ISO_UTC_MS.match(stamp), stamp
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert parsed.utcoffset() == timedelta(0)
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 5


def test_format_utc_converts_offsets_to_utc():
    moment = datetime(2025, 1, 26, 20, 41, 38, 130_999, tzinfo=timezone(timedelta(hours=2)))
    assert format_utc(moment) == "2025-01-26T18:41:38.130Z"


# -- the wire shape ----------------------------------------------------------------------------


def test_event_message_is_the_seed_shape_plus_id_and_timestamp():
    data = {"type": "status-update", "endedReason": "customer-busy"}
    draft_ = EventDraft("call-9", "ended", "a@b.com", data)
    message = event_message("1737916898130000", draft_, "2025-01-26T18:41:38.130Z")
    assert message == {
        "event": EVENT_NAME,
        "callId": "call-9",
        "status": "ended",
        "data": data,
        "id": "1737916898130000",
        "timestamp": "2025-01-26T18:41:38.130Z",
    }
    assert EVENT_NAME == "call.status.changed"
    assert list(message)[:4] == ["event", "callId", "status", "data"]


def test_publish_result_json():
    assert PublishResult("1737916898130000", 2).as_json() == {
        "id": "1737916898130000", "delivered": 2,
    }
    assert PublishResult(None, 0, "stale").as_json() == {
        "id": None, "delivered": 0, "dropped": "stale",
    }
