"""Report periods: default date, local-midnight boundaries in UTC, invalid settings."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from clicktrail.reporter.period import day_bounds_utc, day_length_hours, make_period

BOUNDARY_CASES = [
    # (id, zone, report date, lookback days, expected start UTC, expected end UTC)
    ("paris-winter", "Europe/Paris", date(2026, 12, 3), 1,
     datetime(2026, 12, 2, 23, tzinfo=UTC), datetime(2026, 12, 3, 23, tzinfo=UTC)),
    ("paris-dst-start", "Europe/Paris", date(2026, 3, 29), 1,
     datetime(2026, 3, 28, 23, tzinfo=UTC), datetime(2026, 3, 29, 22, tzinfo=UTC)),
    ("paris-dst-end", "Europe/Paris", date(2026, 10, 25), 1,
     datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 23, tzinfo=UTC)),
    ("paris-over-dst-end", "Europe/Paris", date(2026, 10, 26), 3,
     datetime(2026, 10, 23, 22, tzinfo=UTC), datetime(2026, 10, 26, 23, tzinfo=UTC)),
    ("new-york-dst-start", "America/New_York", date(2026, 3, 8), 1,
     datetime(2026, 3, 8, 5, tzinfo=UTC), datetime(2026, 3, 9, 4, tzinfo=UTC)),
    ("new-york-dst-end", "America/New_York", date(2026, 11, 1), 1,
     datetime(2026, 11, 1, 4, tzinfo=UTC), datetime(2026, 11, 2, 5, tzinfo=UTC)),
    ("new-york-30-days", "America/New_York", date(2026, 12, 3), 30,
     datetime(2026, 11, 4, 5, tzinfo=UTC), datetime(2026, 12, 4, 5, tzinfo=UTC)),
    ("utc", "UTC", date(2026, 12, 3), 2,
     datetime(2026, 12, 2, tzinfo=UTC), datetime(2026, 12, 4, tzinfo=UTC)),
]


@pytest.mark.parametrize(("zone", "report_date", "lookback", "start", "end"),
                         [c[1:] for c in BOUNDARY_CASES], ids=[c[0] for c in BOUNDARY_CASES])
def test_period_boundaries(zone: str, report_date: date, lookback: int, start: datetime,
                           end: datetime) -> None:
    period = make_period(report_date, zone, lookback)

    assert period.start_utc == start
    assert period.end_utc == end


# (id, zone, day, expected local midnight starting the day in UTC, expected length in hours)
DAY_CASES = [
    ("paris-23h", "Europe/Paris", date(2026, 3, 29), datetime(2026, 3, 28, 23, tzinfo=UTC), 23),
    ("paris-25h", "Europe/Paris", date(2026, 10, 25), datetime(2026, 10, 24, 22, tzinfo=UTC), 25),
    ("paris-24h", "Europe/Paris", date(2026, 10, 26), datetime(2026, 10, 25, 23, tzinfo=UTC), 24),
    ("new-york-23h", "America/New_York", date(2026, 3, 8), datetime(2026, 3, 8, 5, tzinfo=UTC), 23),
    ("new-york-25h", "America/New_York", date(2026, 11, 1), datetime(2026, 11, 1, 4, tzinfo=UTC),
     25),
    # Havana repeats 00:00 to 00:59 on 1 November: the day starts at the first midnight.
    ("havana-repeated-midnight", "America/Havana", date(2026, 11, 1),
     datetime(2026, 11, 1, 4, tzinfo=UTC), 25),
    # Beirut skips 00:00 to 00:59 on 29 March: the day starts at 01:00 EEST.
    ("beirut-skipped-midnight", "Asia/Beirut", date(2026, 3, 29),
     datetime(2026, 3, 28, 22, tzinfo=UTC), 23),
    # Lord Howe Island moves its clocks by 30 minutes.
    ("lord-howe-half-hour", "Australia/Lord_Howe", date(2026, 4, 5),
     datetime(2026, 4, 4, 13, tzinfo=UTC), 24.5),
]


@pytest.mark.parametrize(("zone", "day", "start", "hours"), [c[1:] for c in DAY_CASES],
                         ids=[c[0] for c in DAY_CASES])
def test_local_day_bounds(zone: str, day: date, start: datetime, hours: float) -> None:
    period = make_period(day, zone, 1)

    assert day_bounds_utc(day, period.timezone) == (start, start + timedelta(hours=hours))
    assert period.day_bounds_utc(day) == (period.start_utc, period.end_utc)
    assert day_length_hours(day, period.timezone) == hours


def test_default_date_is_local_yesterday() -> None:
    # 23:30 UTC on 3 December is already 4 December in Paris.
    now = datetime(2026, 12, 3, 23, 30, tzinfo=UTC)

    assert make_period(None, "Europe/Paris", 30, now=now).report_date == date(2026, 12, 3)
    assert make_period(None, "UTC", 30, now=now).report_date == date(2026, 12, 2)


def test_unknown_zone_rejected() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Europe/Nowhere'"):
        make_period(date(2026, 12, 3), "Europe/Nowhere", 30)


def test_zero_lookback_rejected() -> None:
    with pytest.raises(ValueError, match="lookback_days must be at least 1, got 0"):
        make_period(date(2026, 12, 3), "UTC", 0)
