"""Opens and clicks over time: per hour after the delivery's start, then per local day.

The series starts at the delivery's start: the catalog's sent_at, else the first MTA `sent`
event, else the delivery's first event. The first MAX_HOURLY_HOURS hours from the local hour
that contains the start are shown hour by hour. The rest of the period is shown per local day
of the report time zone, which lasts 23 or 25 hours on a DST change. Buckets are built in UTC,
one real hour each, so the hour that a DST change repeats shows twice, each with its UTC
offset, and the hour it skips has no bucket.

Each bucket counts open and click hits (the figures `open` and `click` of figure_events) raw
and human-only. Time to 50 % and 90 % is measured on each recipient's first open (or first
click), the same recipients as the unique opens and unique clickers of the delivery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa

from .catalog import DeliveryCatalog
from .charts import Chart, bar_chart
from .period import local_midnight
from .sections import Section, SectionInput

log = logging.getLogger(__name__)

MAX_HOURLY_HOURS = 72
# Daily rows shown at most. Hits after the hourly rows and before the first daily row (a
# delivery whose start is more than a year before the report date) share one row.
MAX_DAILY_ROWS = 366
# Percent of the recipients for which the report gives the time to reach them.
MILESTONE_PERCENTS = (50, 90)

HOUR = timedelta(hours=1)

START_SOURCES = {
    "catalog": "the catalog's send time",
    "sent": "the first MTA sent event",
    "first_event": "the delivery's first event",
}

STARTS_SQL = """
SELECT delivery_id,
       min(event_time) FILTER (event_type = 'sent') AS first_sent,
       min(event_time) AS first_event
FROM events
GROUP BY delivery_id
"""

# ASOF LEFT JOIN puts each hit in the last bucket that starts at or before it. Buckets are
# contiguous up to the period's end and `events` stops there, so only hits before the first
# bucket get no bucket (NULL). Human hits are figure_events.human_hit, as in the delivery
# figures: an image proxy's hits count as one human open per recipient.
BUCKET_COUNTS_SQL = """
SELECT h.delivery_id, b.bucket, h.figure,
       count(*) AS hits,
       count(*) FILTER (h.human_hit) AS human_hits
FROM figure_events AS h
ASOF LEFT JOIN timeline_buckets AS b
  ON h.delivery_id = b.delivery_id AND h.event_time >= b.start_utc
WHERE h.figure IN ('open', 'click')
GROUP BY ALL
"""

# For each delivery, figure and scope (raw, human): the recipients with such a hit, and the
# first hit of the recipient at position ceil(p * recipients / 100) in time order, for p = 50
# and 90. Integer arithmetic keeps the position exact: (p * n + 99) // 100 is ceil(p * n / 100).
MILESTONES_SQL = """
WITH firsts AS (
  SELECT f.delivery_id, f.figure, f.recipient_id,
         min(f.event_time) AS first_raw,
         min(f.event_time) FILTER (f.human) AS first_human
  FROM figure_events AS f
  WHERE f.figure IN ('open', 'click') AND f.recipient_id IS NOT NULL
  GROUP BY ALL
),
scoped AS (
  SELECT delivery_id, figure, 'raw' AS scope, first_raw AS first_time FROM firsts
  UNION ALL
  SELECT delivery_id, figure, 'human' AS scope, first_human AS first_time FROM firsts
  WHERE first_human IS NOT NULL
),
ranked AS (
  SELECT *,
         row_number() OVER (PARTITION BY delivery_id, figure, scope ORDER BY first_time)
           AS position,
         count(*) OVER (PARTITION BY delivery_id, figure, scope) AS recipients
  FROM scoped
)
SELECT delivery_id, figure, scope, any_value(recipients) AS recipients,
       min(first_time) FILTER (position = (50 * recipients + 99) // 100) AS reached_50,
       min(first_time) FILTER (position = (90 * recipients + 99) // 100) AS reached_90
FROM ranked
GROUP BY ALL
"""


@dataclass
class TimelineRow:
    """One bucket of the series: an hour, a local day, or the hits outside both."""

    # "hour", "day", "earlier" (after the hours, before the first daily row), "before_start"
    kind: str
    start_utc: datetime | None
    end_utc: datetime | None
    # The table's label contains the date. The chart's label is shorter.
    label: str
    chart_label: str
    opens: int = 0
    human_opens: int = 0
    clicks: int = 0
    human_clicks: int = 0

    @property
    def has_hits(self) -> bool:
        return bool(self.opens or self.clicks)


@dataclass(frozen=True)
class Milestone:
    """The time from the start until percent of the recipients had their first hit."""

    percent: int
    recipients: int
    # The first hit of the recipient that reaches the percentage; None without recipients.
    reached_at: datetime | None
    after: timedelta | None

    @property
    def after_text(self) -> str:
        return format_duration(self.after)


@dataclass(frozen=True)
class MilestoneRow:
    # "Unique opens" or "Unique clickers", raw or human-only
    figure: str
    human_only: bool
    recipients: int
    milestones: tuple[Milestone, ...]


@dataclass
class Timeline:
    """The template context of one delivery's "Opens and clicks over time" section."""

    zone: ZoneInfo
    start_utc: datetime
    start_source: str
    hours: list[TimelineRow]
    days: list[TimelineRow]
    # Hits after the hours and before the first daily row; None when the days follow the hours.
    earlier: TimelineRow | None
    before_start: TimelineRow
    milestone_rows: list[MilestoneRow] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)

    @property
    def rows(self) -> list[TimelineRow]:
        """Every bucket in time order, starting with the hits before the start."""
        middle = [self.earlier] if self.earlier is not None else []
        return [self.before_start, *self.hours, *middle, *self.days]

    @property
    def rows_with_hits(self) -> list[TimelineRow]:
        return [row for row in self.rows if row.has_hits]

    @property
    def totals(self) -> TimelineRow:
        total = TimelineRow("total", None, None, "Total", "Total")
        for row in self.rows:
            total.opens += row.opens
            total.human_opens += row.human_opens
            total.clicks += row.clicks
            total.human_clicks += row.human_clicks
        return total


def timeline_section() -> Section:
    return Section(name="timeline", title="Opens and clicks over time", compute=compute_timelines)


def compute_timelines(section_input: SectionInput) -> dict[str, Timeline]:
    """Compute every active delivery's series, milestones and charts."""
    con = section_input.con
    period = section_input.period
    zone = period.timezone

    timelines: dict[str, Timeline] = {}
    for delivery_id, first_sent, first_event in con.execute(STARTS_SQL).fetchall():
        catalog = section_input.catalogs.get(delivery_id)
        start, source = delivery_start(catalog, first_sent, first_event)
        timelines[delivery_id] = build_timeline(start, source, period.end_utc, zone)

    _count_hits(con, timelines)
    _add_milestones(con, timelines)
    for delivery_id, timeline in timelines.items():
        timeline.charts = timeline_charts(timeline)
        log.debug("timeline of delivery %r: start %s (%s), %d hours, %d days", delivery_id,
                  timeline.start_utc.isoformat(), timeline.start_source, len(timeline.hours),
                  len(timeline.days))
    return timelines


def delivery_start(catalog: DeliveryCatalog | None, first_sent: datetime | None,
                   first_event: datetime) -> tuple[datetime, str]:
    """Pick the delivery's start and return it with its source (a START_SOURCES value)."""
    if catalog is not None and catalog.sent_at is not None:
        return catalog.sent_at.astimezone(UTC), START_SOURCES["catalog"]
    if first_sent is not None:
        return first_sent.astimezone(UTC), START_SOURCES["sent"]
    return first_event.astimezone(UTC), START_SOURCES["first_event"]


def build_timeline(start_utc: datetime, start_source: str, end_utc: datetime,
                   zone: ZoneInfo) -> Timeline:
    """Lay out the empty buckets from the local hour containing start_utc up to end_utc."""
    first_hour = floor_local_hour(start_utc, zone)
    hours_end = max(first_hour, min(first_hour + MAX_HOURLY_HOURS * HOUR, end_utc))

    hours = []
    moment = first_hour
    while moment < hours_end:
        label, chart_label = hour_labels(moment, zone)
        hours.append(TimelineRow("hour", moment, min(moment + HOUR, hours_end), label, chart_label))
        moment += HOUR

    days, earlier = _day_rows(hours_end, end_utc, zone)
    before_start = TimelineRow("before_start", None, first_hour, "Before the start",
                               "Before the start")
    return Timeline(zone=zone, start_utc=start_utc, start_source=start_source, hours=hours,
                    days=days, earlier=earlier, before_start=before_start)


def floor_local_hour(moment: datetime, zone: ZoneInfo) -> datetime:
    # Subtracting the local minutes keeps the UTC offset of the moment, so the result is a
    # real instant even on a DST change day, and in zones offset by 30 or 45 minutes it is a
    # full local hour.
    local = moment.astimezone(zone)
    return moment - timedelta(minutes=local.minute, seconds=local.second,
                              microseconds=local.microsecond)


def hour_labels(moment: datetime, zone: ZoneInfo) -> tuple[str, str]:
    """Label an hour in local time. An hour that a DST change repeats also gets its UTC offset."""
    local = moment.astimezone(zone)
    label = local.strftime("%a %Y-%m-%d %H:%M")
    chart_label = local.strftime("%d %b %H:%M")
    if _is_repeated(local):
        offset = "UTC" + local.isoformat(timespec="minutes")[-6:]
        label += f" ({offset})"
        chart_label += f" {offset}"
    return label, chart_label


def _is_repeated(local: datetime) -> bool:
    # A wall time that occurs twice has a different UTC offset under its other fold.
    other = local.replace(fold=1 - local.fold)
    return other.utcoffset() != local.utcoffset()


def _day_rows(hours_end: datetime, end_utc: datetime,
              zone: ZoneInfo) -> tuple[list[TimelineRow], TimelineRow | None]:
    if hours_end >= end_utc:
        return [], None

    # The first daily row starts where the hours end, usually part of a local day.
    first_day = hours_end.astimezone(zone).date()
    last_day = (end_utc - timedelta(microseconds=1)).astimezone(zone).date()

    earlier = None
    if (last_day - first_day).days + 1 > MAX_DAILY_ROWS:
        first_day = last_day - timedelta(days=MAX_DAILY_ROWS - 1)
        earlier_end = local_midnight(first_day, zone)
        earlier = TimelineRow("earlier", hours_end, earlier_end,
                              f"{_day_label(hours_end, zone)} to {_day_label(earlier_end, zone)}",
                              "Earlier")
        hours_end = earlier_end

    days = []
    day = first_day
    while day <= last_day:
        day_start = max(local_midnight(day, zone), hours_end)
        day_end = min(local_midnight(day + timedelta(days=1), zone), end_utc)
        days.append(_day_row(day, day_start, day_end, zone))
        day += timedelta(days=1)
    return days, earlier


def _day_row(day: date, start: datetime, end: datetime, zone: ZoneInfo) -> TimelineRow:
    label = day.strftime("%a %Y-%m-%d")
    chart_label = day.strftime("%d %b")
    if start != local_midnight(day, zone):
        since = start.astimezone(zone).strftime("%H:%M")
        label += f" from {since}"
        chart_label += f" from {since}"
    else:
        hours = (end - start) / HOUR
        if end == local_midnight(day + timedelta(days=1), zone) and hours != 24:
            # A DST change day is labelled with its length, or readers take it for 24 hours.
            label += f" ({hours:g} h)"
            chart_label += f" ({hours:g} h)"
    return TimelineRow("day", start, end, label, chart_label)


def _day_label(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def _count_hits(con: duckdb.DuckDBPyConnection, timelines: dict[str, Timeline]) -> None:
    rows_by_delivery: dict[str, list[TimelineRow]] = {}
    delivery_ids, bucket_ids, starts = [], [], []
    for delivery_id, timeline in timelines.items():
        buckets = [row for row in timeline.rows if row.kind != "before_start"]
        rows_by_delivery[delivery_id] = buckets
        for index, row in enumerate(buckets):
            delivery_ids.append(delivery_id)
            bucket_ids.append(index)
            starts.append(row.start_utc)

    table = pa.table({
        "delivery_id": pa.array(delivery_ids, pa.string()),
        "bucket": pa.array(bucket_ids, pa.int32()),
        "start_utc": pa.array(starts, pa.timestamp("us", tz="UTC")),
    })
    con.register("timeline_buckets", table)
    try:
        for delivery_id, bucket, figure, hits, human_hits in con.execute(
                BUCKET_COUNTS_SQL).fetchall():
            timeline = timelines[delivery_id]
            row = timeline.before_start if bucket is None else rows_by_delivery[delivery_id][bucket]
            if figure == "open":
                row.opens += hits
                row.human_opens += human_hits
            else:
                row.clicks += hits
                row.human_clicks += human_hits
    finally:
        con.unregister("timeline_buckets")


def _add_milestones(con: duckdb.DuckDBPyConnection, timelines: dict[str, Timeline]) -> None:
    found: dict[tuple[str, str, str], tuple[int, datetime, datetime]] = {}
    for delivery_id, figure, scope, recipients, reached_50, reached_90 in con.execute(
            MILESTONES_SQL).fetchall():
        found[(delivery_id, figure, scope)] = (recipients, reached_50, reached_90)

    names = {"open": "Unique opens", "click": "Unique clickers"}
    for delivery_id, timeline in timelines.items():
        for figure, name in names.items():
            for scope in ("raw", "human"):
                recipients, *reached = found.get((delivery_id, figure, scope), (0, None, None))
                milestones = tuple(
                    Milestone(percent, recipients, moment,
                              None if moment is None else moment - timeline.start_utc)
                    for percent, moment in zip(MILESTONE_PERCENTS, reached, strict=True))
                timeline.milestone_rows.append(
                    MilestoneRow(name, scope == "human", recipients, milestones))


def timeline_charts(timeline: Timeline) -> list[Chart]:
    """Draw the hourly opens, the hourly clicks and the daily series, each raw and human-only."""
    if not any(row.has_hits for row in timeline.rows):
        return []

    zone = timeline.zone.key
    charts = []
    if timeline.hours:
        labels = [row.chart_label for row in timeline.hours]
        charts.append(bar_chart(
            f"Opens per hour ({zone})", labels,
            {"Opens": [row.opens for row in timeline.hours],
             "Human opens": [row.human_opens for row in timeline.hours]},
            label_step=6 if len(labels) > 24 else 1))
        charts.append(bar_chart(
            f"Clicks per hour ({zone})", labels,
            {"Clicks": [row.clicks for row in timeline.hours],
             "Human clicks": [row.human_clicks for row in timeline.hours]},
            label_step=6 if len(labels) > 24 else 1))

    days = ([timeline.earlier] if timeline.earlier else []) + timeline.days
    if days:
        charts.append(bar_chart(
            f"Opens and clicks per day after the first {MAX_HOURLY_HOURS} hours ({zone})",
            [row.chart_label for row in days],
            {"Opens": [row.opens for row in days],
             "Human opens": [row.human_opens for row in days],
             "Clicks": [row.clicks for row in days],
             "Human clicks": [row.human_clicks for row in days]}))
    return charts


def format_duration(after: timedelta | None) -> str:
    """Format a time since the start as days, hours and minutes, for the milestone table."""
    if after is None:
        return "n/a"
    if after < timedelta(0):
        return "before the start"

    minutes = int(after.total_seconds() // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} d {hours} h {minutes} min"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return "under 1 min"
