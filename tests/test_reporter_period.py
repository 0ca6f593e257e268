"""Report periods: default date, local-midnight boundaries in UTC, invalid settings."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from clicktrail.reporter.period import make_period

BOUNDARY_CASES = [
    # (id, zone, report date, lookback days, expected start UTC, expected end UTC)
    ("paris-winter", "Europe/Paris", date(2026, 12, 3), 1,
     datetime(2026, 12, 2, 23, tzinfo=UTC), datetime(2026, 12, 3, 23, tzinfo=UTC)),
    ("paris-dst-start", "Europe/Paris", date(2026, 3, 29), 1,
     datetime(2026, 3, 28, 23, tzinfo=UTC), datetime(2026, 3, 29, 22, tzinfo=UTC)),
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
