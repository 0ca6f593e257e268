"""Opens and clicks over time: local hours and days across DST changes, human-only, milestones."""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from clicktrail.agent.config import ClassificationConfig
from clicktrail.reporter import metrics as m
from clicktrail.reporter.catalog import load_catalog
from clicktrail.reporter.nightly import run_nightly
from clicktrail.reporter.period import make_period
from clicktrail.reporter.sections import SectionInput
from clicktrail.reporter.store import events_dataset, open_store
from clicktrail.reporter.timeline import MAX_DAILY_ROWS, Timeline, compute_timelines, format_duration
from pypdf import PdfReader

from tests.reporter_fixtures import event_row, utc, write_catalog, write_events

pytestmark = pytest.mark.filterwarnings(
    "ignore:HarfBuzz-Subset will be required:DeprecationWarning")


def compute(store: Path, zone: str, report_date: date, lookback_days: int = 1,
            classes: dict[str, str] | None = None) -> tuple[dict[str, Timeline], list]:
    """Run the nightly queries up to the timeline section; return it and the unattributed counts.

    classes replaces the classifier's result: event_id -> class, for every open and click.
    """
    opened = open_store(str(store))
    period = make_period(report_date, zone, lookback_days)
    con = duckdb.connect()
    try:
        active = m.find_active_deliveries(con, events_dataset(opened), period)
        catalogs = {delivery_id: load_catalog(opened, delivery_id) for delivery_id in active}
        m.prepare_events(con, active, period, catalogs, ClassificationConfig())
        if classes is not None:
            table = pa.table({"event_id": list(classes), "class": list(classes.values())})
            con.register("test_classes", table)
            con.execute("CREATE OR REPLACE TEMP TABLE event_classes AS "
                        "SELECT event_id, class, []::VARCHAR[] AS reasons FROM test_classes")
            m.create_figure_view(con)
        timelines = compute_timelines(SectionInput(con, catalogs, period, opened))
        unattributed = m.count_unattributed(con, period)
    finally:
        con.close()
    return timelines, unattributed


def opens_at(delivery_id: str, times: list[str], **extra: Any) -> list[dict[str, Any]]:
    return [event_row(event_type="open", event_time=time, delivery_id=delivery_id,
                      recipient_id=f"r{number}", http_method="GET", **extra)
            for number, time in enumerate(times, start=1)]


def hit_rows(timeline: Timeline) -> list[tuple[str, int, int]]:
    return [(row.label, row.opens, row.clicks) for row in timeline.rows_with_hits]


# Each case: a delivery sent at local midnight starting a DST change day, its opens (UTC, with
# the local reading in the comment), the hourly rows of the report day and the opens that fall
# in the day. Where a local time does not exist (02:00 to 02:59 in Paris on 29 March), no UTC
# instant reads as it, so no event and no row can carry it.
DST_CASES = [
    ("paris-23h", "Europe/Paris", date(2026, 3, 29), "2026-03-28T23:00:00Z",
     ["2026-03-28T22:59:00Z",   # 23:59 CET on the 28th: before the day
      "2026-03-29T00:00:00Z",   # 01:00 CET
      "2026-03-29T00:59:00Z",   # 01:59 CET
      "2026-03-29T01:00:00Z",   # 03:00 CEST, one minute after 01:59 CET
      "2026-03-29T01:59:00Z",   # 03:59 CEST
      "2026-03-29T21:59:00Z",   # 23:59 CEST
      "2026-03-29T22:00:00Z"],  # 00:00 CEST on the 30th: after the day
     23,
     [("Sun 2026-03-29 01:00", 2), ("Sun 2026-03-29 03:00", 2), ("Sun 2026-03-29 23:00", 1)],
     5),
    ("paris-25h", "Europe/Paris", date(2026, 10, 25), "2026-10-24T22:00:00Z",
     ["2026-10-24T21:59:00Z",   # 23:59 CEST on the 24th: before the day
      "2026-10-24T22:00:00Z",   # 00:00 CEST
      "2026-10-24T23:59:00Z",   # 01:59 CEST
      "2026-10-25T00:00:00Z",   # 02:00 CEST, first time
      "2026-10-25T00:59:00Z",   # 02:59 CEST
      "2026-10-25T01:00:00Z",   # 02:00 CET, second time
      "2026-10-25T01:59:00Z",   # 02:59 CET
      "2026-10-25T02:00:00Z",   # 03:00 CET
      "2026-10-25T22:59:00Z",   # 23:59 CET
      "2026-10-25T23:00:00Z"],  # 00:00 CET on the 26th: after the day
     25,
     [("Sun 2026-10-25 00:00", 1), ("Sun 2026-10-25 01:00", 1),
      ("Sun 2026-10-25 02:00 (UTC+02:00)", 2), ("Sun 2026-10-25 02:00 (UTC+01:00)", 2),
      ("Sun 2026-10-25 03:00", 1), ("Sun 2026-10-25 23:00", 1)],
     8),
    ("new-york-23h", "America/New_York", date(2026, 3, 8), "2026-03-08T05:00:00Z",
     ["2026-03-08T06:59:00Z",   # 01:59 EST
      "2026-03-08T07:00:00Z",   # 03:00 EDT
      "2026-03-08T07:59:00Z",   # 03:59 EDT
      "2026-03-09T03:59:00Z",   # 23:59 EDT
      "2026-03-09T04:00:00Z"],  # 00:00 EDT on the 9th: after the day
     23,
     [("Sun 2026-03-08 01:00", 1), ("Sun 2026-03-08 03:00", 2), ("Sun 2026-03-08 23:00", 1)],
     4),
    ("new-york-25h", "America/New_York", date(2026, 11, 1), "2026-11-01T04:00:00Z",
     ["2026-11-01T03:59:00Z",   # 23:59 EDT on 31 October: before the day
      "2026-11-01T05:59:00Z",   # 01:59 EDT
      "2026-11-01T06:00:00Z",   # 01:00 EST, second time
      "2026-11-01T06:59:00Z",   # 01:59 EST
      "2026-11-01T07:00:00Z",   # 02:00 EST
      "2026-11-01T07:59:00Z",   # 02:59 EST
      "2026-11-01T08:00:00Z",   # 03:00 EST
      "2026-11-02T04:59:00Z"],  # 23:59 EST
     25,
     [("Sun 2026-11-01 01:00 (UTC-04:00)", 1), ("Sun 2026-11-01 01:00 (UTC-05:00)", 2),
      ("Sun 2026-11-01 02:00", 2), ("Sun 2026-11-01 03:00", 1), ("Sun 2026-11-01 23:00", 1)],
     7),
]


@pytest.mark.parametrize(("zone", "report_date", "sent_at", "times", "hours", "rows", "in_day"),
                         [case[1:] for case in DST_CASES], ids=[case[0] for case in DST_CASES])
def test_dst_day_hourly_rows(tmp_path: Path, zone: str, report_date: date, sent_at: str,
                             times: list[str], hours: int, rows: list[tuple[str, int]],
                             in_day: int) -> None:
    store = tmp_path / "store"
    write_events(store, opens_at("dst", times))
    # The same instants without a delivery id, which the data-quality box counts per period.
    write_events(store, [event_row(event_type="open", event_time=time) for time in times],
                 file_stem="mx1-misc-0")
    write_catalog(store, {"delivery_id": "dst", "sent_at": sent_at, "links": []})

    timelines, unattributed = compute(store, zone, report_date)
    timeline = timelines["dst"]

    assert unattributed == [("open", in_day)]
    assert len(timeline.hours) == hours
    assert timeline.days == []
    assert [(label, opens) for label, opens, _clicks in hit_rows(timeline)
            if not label.startswith("Before")] == rows
    assert timeline.before_start.opens == (1 if times[0] < sent_at else 0)
    assert timeline.totals.opens == in_day + timeline.before_start.opens


def test_skipped_hour_has_no_row(tmp_path: Path) -> None:
    write_events(tmp_path / "store", opens_at("dst", ["2026-03-29T10:00:00Z"]))
    write_catalog(tmp_path / "store", {"delivery_id": "dst", "sent_at": "2026-03-28T23:00:00Z",
                                       "links": []})

    timeline = compute(tmp_path / "store", "Europe/Paris", date(2026, 3, 29))[0]["dst"]
    labels = [row.label for row in timeline.hours]

    assert "Sun 2026-03-29 01:00" in labels
    assert "Sun 2026-03-29 03:00" in labels
    assert not [label for label in labels if "02:" in label]
    assert len(labels) == len(set(labels)) == 23


def test_repeated_hour_has_two_rows(tmp_path: Path) -> None:
    write_events(tmp_path / "store", opens_at("dst", ["2026-10-25T10:00:00Z"]))
    write_catalog(tmp_path / "store", {"delivery_id": "dst", "sent_at": "2026-10-24T22:00:00Z",
                                       "links": []})

    timeline = compute(tmp_path / "store", "Europe/Paris", date(2026, 10, 25))[0]["dst"]
    labels = [row.label for row in timeline.hours]

    assert labels[1:5] == ["Sun 2026-10-25 01:00", "Sun 2026-10-25 02:00 (UTC+02:00)",
                           "Sun 2026-10-25 02:00 (UTC+01:00)", "Sun 2026-10-25 03:00"]
    assert len(labels) == len(set(labels)) == 25
    assert all(row.end_utc - row.start_utc == timedelta(hours=1) for row in timeline.hours)


def test_daily_rows_after_72_hours(tmp_path: Path) -> None:
    # Sent at 12:00 CEST on 20 October: the hours end at 12:00 CEST on the 23rd.
    write_events(tmp_path / "store", opens_at("long", [
        "2026-10-23T09:59:00Z",   # 11:59 CEST: the last hourly row
        "2026-10-23T10:00:00Z",   # 12:00 CEST: the first daily row, from 12:00
        "2026-10-24T21:59:00Z",   # 23:59 CEST on the 24th
        "2026-10-24T22:00:00Z",   # 00:00 CEST on the 25th
        "2026-10-25T22:59:00Z",   # 23:59 CET on the 25th
        "2026-10-25T23:00:00Z",   # 00:00 CET on the 26th
    ]) + [event_row(event_type="click", event_time="2026-10-25T01:30:00Z", delivery_id="long",
                    recipient_id="r1", link_id="L1", http_method="GET")])
    write_catalog(tmp_path / "store", {"delivery_id": "long", "sent_at": "2026-10-20T10:00:00Z",
                                       "links": []})

    timeline = compute(tmp_path / "store", "Europe/Paris", date(2026, 10, 26))[0]["long"]

    assert len(timeline.hours) == 72
    assert timeline.hours[-1].label == "Fri 2026-10-23 11:00"
    assert [(row.label, row.opens, row.clicks) for row in timeline.days] == [
        ("Fri 2026-10-23 from 12:00", 1, 0),
        ("Sat 2026-10-24", 1, 0),
        ("Sun 2026-10-25 (25 h)", 2, 1),
        ("Mon 2026-10-26", 1, 0),
    ]
    assert timeline.hours[-1].opens == 1
    assert timeline.earlier is None
    assert [chart.title for chart in timeline.charts] == [
        "Opens per hour (Europe/Paris)", "Clicks per hour (Europe/Paris)",
        "Opens and clicks per day after the first 72 hours (Europe/Paris)"]


def test_short_day_labelled_23_hours(tmp_path: Path) -> None:
    write_events(tmp_path / "store", opens_at("spring", ["2026-03-29T12:00:00Z"]))
    write_catalog(tmp_path / "store", {"delivery_id": "spring",
                                       "sent_at": "2026-03-20T09:00:00Z", "links": []})

    timeline = compute(tmp_path / "store", "Europe/Paris", date(2026, 3, 30), 2)[0]["spring"]
    days = {row.label: row for row in timeline.days}

    assert days["Sun 2026-03-29 (23 h)"].opens == 1
    assert days["Sun 2026-03-29 (23 h)"].end_utc - days["Sun 2026-03-29 (23 h)"].start_utc \
        == timedelta(hours=23)
    assert "Mon 2026-03-30" in days


def test_old_delivery_gets_an_earlier_row(tmp_path: Path) -> None:
    write_events(tmp_path / "store", opens_at("old", [
        "2024-01-10T12:00:00Z",   # inside the first 72 hours
        "2024-06-01T12:00:00Z",   # after the hours, before the last 366 days
        "2026-12-03T12:00:00Z",   # the report date
    ]))
    write_catalog(tmp_path / "store", {"delivery_id": "old", "sent_at": "2024-01-10T08:00:00Z",
                                       "links": []})

    timeline = compute(tmp_path / "store", "UTC", date(2026, 12, 3))[0]["old"]

    assert len(timeline.days) == MAX_DAILY_ROWS
    assert timeline.days[0].label == "Wed 2025-12-03"
    assert timeline.days[-1].label == "Thu 2026-12-03"
    assert timeline.days[-1].opens == 1
    assert timeline.earlier is not None
    assert timeline.earlier.label == "2024-01-13 08:00 to 2025-12-03 00:00"
    assert timeline.earlier.opens == 1
    assert timeline.totals.opens == 3


# Opens and clicks of delivery "h" (UTC, no catalog, first MTA sent event at 08:00) with the
# class the test gives each. Human-only keeps human, proxy_open and unknown.
CLASSED_HITS = [
    # (event id, recipient, event type, UTC time, class)
    ("o1", "r1", "open", "2026-12-03T08:05:00Z", "machine_prefetch"),
    ("o2", "r1", "open", "2026-12-03T09:00:00Z", "human"),
    ("o3", "r2", "open", "2026-12-03T08:30:00Z", "human"),
    ("o4", "r3", "open", "2026-12-03T08:01:00Z", "machine_prefetch"),
    ("o5", "r4", "open", "2026-12-03T10:00:00Z", "proxy_open"),
    ("c1", "r1", "click", "2026-12-03T08:02:00Z", "scanner_click"),
    ("c2", "r2", "click", "2026-12-03T08:40:00Z", "human"),
    ("c3", "r3", "click", "2026-12-03T12:00:00Z", "unknown"),
]


@pytest.fixture
def classed(tmp_path: Path) -> Timeline:
    store = tmp_path / "store"
    write_events(store, [
        event_row(event_type="sent", event_time="2026-12-03T08:10:00Z", delivery_id="h",
                  recipient_id="r2"),
        event_row(event_type="sent", event_time="2026-12-03T08:00:00Z", delivery_id="h",
                  recipient_id="r1"),
    ], file_stem="mx1-mta-0")
    write_events(store, [
        event_row(event_id=event_id, event_type=event_type, event_time=time, delivery_id="h",
                  recipient_id=recipient, http_method="GET",
                  link_id="L1" if event_type == "click" else None)
        for event_id, recipient, event_type, time, _class in CLASSED_HITS])
    classes = {event_id: name for event_id, _r, _t, _time, name in CLASSED_HITS}

    return compute(store, "UTC", date(2026, 12, 3), classes=classes)[0]["h"]


def test_start_from_first_sent_event(classed: Timeline) -> None:
    assert classed.start_utc == utc("2026-12-03T08:00:00Z")
    assert classed.start_source == "the first MTA sent event"


def test_hourly_rows_raw_and_human(classed: Timeline) -> None:
    rows = [(row.label, row.opens, row.human_opens, row.clicks, row.human_clicks)
            for row in classed.rows_with_hits]

    assert rows == [
        ("Thu 2026-12-03 08:00", 3, 1, 2, 1),
        ("Thu 2026-12-03 09:00", 1, 1, 0, 0),
        ("Thu 2026-12-03 10:00", 1, 1, 0, 0),
        ("Thu 2026-12-03 12:00", 0, 0, 1, 1),
    ]
    # 08:00 to the end of the report date.
    assert len(classed.hours) == 16


def test_milestones_raw_and_human(classed: Timeline) -> None:
    found = {(row.figure, row.human_only): (row.recipients,
                                            [m.after_text for m in row.milestones])
             for row in classed.milestone_rows}

    # Raw first opens 08:01, 08:05, 08:30, 10:00: the 2nd and 4th of 4 recipients.
    assert found[("Unique opens", False)] == (4, ["5 min", "2 h 0 min"])
    # Human first opens 08:30 (r2), 09:00 (r1), 10:00 (r4): the 2nd and 3rd of 3.
    assert found[("Unique opens", True)] == (3, ["1 h 0 min", "2 h 0 min"])
    # Raw first clicks 08:02, 08:40, 12:00: the 2nd and 3rd of 3.
    assert found[("Unique clickers", False)] == (3, ["40 min", "4 h 0 min"])
    # Human first clicks 08:40 (r2), 12:00 (r3): the 1st and 2nd of 2.
    assert found[("Unique clickers", True)] == (2, ["40 min", "4 h 0 min"])


def test_start_from_first_event(tmp_path: Path) -> None:
    write_events(tmp_path / "store", opens_at("t", ["2026-12-03T09:45:00Z",
                                                    "2026-12-03T09:30:00Z"]))

    timeline = compute(tmp_path / "store", "UTC", date(2026, 12, 3))[0]["t"]

    assert timeline.start_utc == utc("2026-12-03T09:30:00Z")
    assert timeline.start_source == "the delivery's first event"
    assert timeline.hours[0].label == "Thu 2026-12-03 09:00"
    assert [m.after_text for m in timeline.milestone_rows[0].milestones] == ["under 1 min",
                                                                              "15 min"]


def test_hits_before_the_start(tmp_path: Path) -> None:
    # The catalog's send time is later than the first open, and after the report date.
    write_events(tmp_path / "store", opens_at("early", ["2026-12-03T09:00:00Z"]))
    write_catalog(tmp_path / "store", {"delivery_id": "early",
                                       "sent_at": "2026-12-05T08:00:00Z", "links": []})

    timeline = compute(tmp_path / "store", "UTC", date(2026, 12, 3))[0]["early"]

    assert timeline.start_source == "the catalog's send time"
    assert timeline.hours == []
    assert timeline.days == []
    assert timeline.before_start.opens == 1
    assert [m.after_text for m in timeline.milestone_rows[0].milestones] == [
        "before the start", "before the start"]


def test_unique_opens_match_delivery_figures(tmp_path: Path) -> None:
    # Unsubscribe and mirror links are not clicks, and an open without a recipient id adds a
    # hit but no recipient.
    store = tmp_path / "store"
    write_events(store, opens_at("f", ["2026-12-03T09:00:00Z", "2026-12-03T09:10:00Z"]) + [
        event_row(event_type="open", event_time="2026-12-03T09:20:00Z", delivery_id="f",
                  http_method="GET"),
        event_row(event_type="click", event_time="2026-12-03T09:30:00Z", delivery_id="f",
                  recipient_id="r1", link_id="LU", http_method="GET"),
        event_row(event_type="click", event_time="2026-12-03T09:40:00Z", delivery_id="f",
                  recipient_id="r2", link_id="L1", http_method="GET"),
    ])
    write_catalog(store, {"delivery_id": "f", "sent_at": "2026-12-03T09:00:00Z", "links": [
        {"link_id": "LU", "url": "https://example.com/u", "type": "unsubscribe"},
        {"link_id": "L1", "url": "https://example.com/a", "type": "click"}]})

    timeline = compute(store, "UTC", date(2026, 12, 3))[0]["f"]
    rows = {row.figure: row.recipients for row in timeline.milestone_rows if not row.human_only}

    assert (timeline.totals.opens, timeline.totals.clicks) == (3, 1)
    assert rows == {"Unique opens": 2, "Unique clickers": 1}


DURATION_CASES = [
    ("none", None, "n/a"),
    ("negative", timedelta(seconds=-1), "before the start"),
    ("seconds", timedelta(seconds=59), "under 1 min"),
    ("minutes", timedelta(minutes=5, seconds=59), "5 min"),
    ("hours", timedelta(hours=2), "2 h 0 min"),
    ("days", timedelta(days=3, hours=4, minutes=5), "3 d 4 h 5 min"),
]


@pytest.mark.parametrize(("after", "expected"), [c[1:] for c in DURATION_CASES],
                         ids=[c[0] for c in DURATION_CASES])
def test_format_duration(after: timedelta | None, expected: str) -> None:
    assert format_duration(after) == expected


def test_report_shows_dst_rows(tmp_path: Path) -> None:
    store = tmp_path / "store"
    write_events(store, opens_at("dst", ["2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z",
                                         "2026-10-25T01:45:00Z"]))
    write_catalog(store, {"delivery_id": "dst", "name": "Autumn", "links": [],
                          "sent_at": "2026-10-24T22:00:00Z"})

    result = run_nightly(str(store), tmp_path / "out", "Europe/Paris", date(2026, 10, 25))
    html = (result.report_dir / "delivery-dst.html").read_text(encoding="utf-8")
    text = re.sub(r"\s+", " ", " ".join(
        page.extract_text() for page in PdfReader(result.report_dir / "delivery-dst.pdf").pages))

    assert html.count('<h2>Opens and clicks over time</h2>') == 1
    assert "Start: 2026-10-25 00:00 CEST, from the catalog&#39;s send time." in html
    assert "<td>Sun 2026-10-25 02:00 (UTC+02:00)</td><td class=\"num\">1</td>" in html
    assert "<td>Sun 2026-10-25 02:00 (UTC+01:00)</td><td class=\"num\">2</td>" in html
    timeline = html.split('id="timeline"', 1)[1].split("</section>", 1)[0]
    assert len(re.findall(r'<img src="data:image/svg\+xml;base64,', timeline)) == 2
    assert "Time to 50 %" in text
    assert "Sun 2026-10-25 02:00 (UTC+02:00) 1 1 0 0" in text
    assert "Sun 2026-10-25 02:00 (UTC+01:00) 2 2 0 0" in text
    assert "Total 3 3 0 0" in text


def test_half_hour_zone_hours(tmp_path: Path) -> None:
    # India is UTC+05:30: local hours start at half past a UTC hour.
    write_events(tmp_path / "store", opens_at("in", ["2026-12-03T08:10:00Z",   # 13:40 IST
                                                     "2026-12-03T08:29:00Z",   # 13:59 IST
                                                     "2026-12-03T08:30:00Z"]))  # 14:00 IST

    timeline = compute(tmp_path / "store", "Asia/Kolkata", date(2026, 12, 3))[0]["in"]

    assert timeline.hours[0].start_utc == utc("2026-12-03T07:30:00Z")
    assert hit_rows(timeline) == [("Thu 2026-12-03 13:00", 2, 0), ("Thu 2026-12-03 14:00", 1, 0)]
    # 13:00 to local midnight ending 3 December.
    assert len(timeline.hours) == 11
