"""The reporting period of a nightly run, with local-midnight boundaries converted to UTC."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@dataclass(frozen=True)
class ReportPeriod:
    """The days [report_date - lookback_days + 1, report_date], in the report time zone."""

    report_date: date
    timezone: ZoneInfo
    lookback_days: int

    @property
    def first_day(self) -> date:
        return self.report_date - timedelta(days=self.lookback_days - 1)

    @property
    def start_utc(self) -> datetime:
        """Local midnight at the start of the first day, in UTC."""
        return local_midnight(self.first_day, self.timezone)

    @property
    def end_utc(self) -> datetime:
        """Local midnight after the report date, in UTC (exclusive)."""
        return local_midnight(self.report_date + timedelta(days=1), self.timezone)

    def local(self, moment: datetime) -> datetime:
        return moment.astimezone(self.timezone)

    def day_bounds_utc(self, day: date) -> tuple[datetime, datetime]:
        """Return local midnight at the start of day and at its end, in UTC."""
        return day_bounds_utc(day, self.timezone)


def day_bounds_utc(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """Return the UTC instants of local midnight starting day and the next local midnight.

    The two are 23 hours apart on the day a DST change skips an hour and 25 hours apart on the
    day it repeats one, so callers must never assume 24.
    """
    return local_midnight(day, zone), local_midnight(day + timedelta(days=1), zone)


def day_length_hours(day: date, zone: ZoneInfo) -> float:
    """Return the length of a local day in hours: 24, or 23 and 25 on DST change days."""
    start, end = day_bounds_utc(day, zone)
    return (end - start) / timedelta(hours=1)


def make_period(report_date: date | None, timezone: str, lookback_days: int,
                now: datetime | None = None) -> ReportPeriod:
    """Build the period; the default report date is yesterday in the report time zone.

    Raises ValueError for an unknown time zone or a lookback below one day.
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {timezone!r}; expected an IANA name such as "
                         "'Europe/Paris'") from exc

    if lookback_days < 1:
        raise ValueError(f"lookback_days must be at least 1, got {lookback_days}")

    if report_date is None:
        today = (now or datetime.now(UTC)).astimezone(zone).date()
        report_date = today - timedelta(days=1)
    return ReportPeriod(report_date=report_date, timezone=zone, lookback_days=lookback_days)


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """Return the UTC instant at which day starts in zone."""
    # fold=0 picks the first of two midnights when a DST change repeats the hour; a skipped
    # midnight resolves to the first valid instant after it once converted to UTC.
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
