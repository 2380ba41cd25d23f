"""utc_timestamp formats exactly as the datetime round trip it replaces."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from webapp.events import format_utc, utc_timestamp


def test_utc_timestamp_matches_datetime_formatting():
    rng = random.Random(3)
    moments = [0.0, 0.0005, 0.9995, 0.9999995, 1.0000005, 1e9 + 0.1234565, 2**31 + 0.5,
               253402300799.999,  # the last second of year 9999
               -62135596800.0, -30610224001.5]  # years 1 and 999: four digits too
    moments += [rng.uniform(0, 4e9) for _ in range(20000)]
    moments += [rng.uniform(-62135596800, 0) for _ in range(2000)]
    base = rng.uniform(1.7e9, 1.8e9)
    moments += [base + n * 0.0001 for n in range(20000)]  # many in the same seconds
    for moment in moments:
        expected = format_utc(datetime.fromtimestamp(moment, tz=UTC))
        assert utc_timestamp(moment) == expected, moment


def test_utc_timestamp_of_now_is_now():
    before = format_utc(datetime.now(tz=UTC))
    stamp = utc_timestamp()
    after = format_utc(datetime.now(tz=UTC))
    assert before <= stamp <= after
