"""Per-recipient summaries of the nightly run, and the `recipient` command's history pages."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from clicktrail.agent.store import open_store as open_agent_store
from clicktrail.agent.store import upload_file
from clicktrail.reporter import metrics as m
from clicktrail.reporter.cli import main
from clicktrail.reporter.nightly import run_nightly
from clicktrail.reporter.period import make_period
from clicktrail.reporter.recipient_history import load_history, write_history
from clicktrail.reporter.recipients import (
    SUMMARY_SCHEMA,
    compute_summaries,
    fetch_summaries,
    safe_file_stem,
    summary_file_stem,
)
from clicktrail.reporter.store import events_dataset, open_store

from . import s3_server, test_end_to_end
from .conftest import CASES
from .reporter_fixtures import (
    HOSTILE_AGENT,
    HOSTILE_URL,
    SAMPLE_TIMEZONE,
    UNSAFE_DELIVERY_ID,
    build_sample_store,
    event_row,
    write_classified,
    write_events,
)

moto_server = s3_server.moto_server
s3_bucket = s3_server.s3_bucket
s3_env = s3_server.s3_env
# The agent and the nightly run over the bundled real logs, bound here for pytest to find.
demo_reports = test_end_to_end.demo_reports

pytestmark = pytest.mark.filterwarnings(
    "ignore:HarfBuzz-Subset will be required:DeprecationWarning")

REPORT_DATE = date(2026, 12, 3)
SUMMARIES = Path("summaries") / "recipients"
HOSTILE_RECIPIENT_IDS = ["../x", "<script>alert(1)</script>", "a\r\nb"]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# Delivery d1 of the sample store, by hand from reporter_fixtures._write_newsletter, in the
# columns of SUMMARY_SCHEMA from recipient_id to machine_clicks. Every open and click is
# classed human by the placeholder classifier. r2's open at 23:30 UTC on 3 December is after
# the report date.
NO_BOUNCE = (None, None, None)
D1_SUMMARIES = [
    ("r1", "delivered", *NO_BOUNCE, 1, 1, 0, 0, 0,
     utc("2026-12-02T09:10"), utc("2026-12-02T09:40"), 2, 2, 1, ["L1"], False, 1, 0, 2, 0, 2, 0),
    # Clicks on the unsubscribe and mirror links are page views, not clicks. The deferral
    # before the delivery counts in no address figure.
    ("r10", "delivered", *NO_BOUNCE, 1, 1, 0, 0, 0,
     None, None, 0, 0, 0, [], False, 1, 1, 0, 0, 0, 0),
    ("r11", "delivered", *NO_BOUNCE, 1, 1, 0, 0, 0,
     None, None, 0, 0, 0, [], False, 0, 0, 0, 0, 0, 0),
    ("r2", "delivered", *NO_BOUNCE, 1, 1, 0, 0, 0,
     utc("2026-12-02T10:05"), utc("2026-12-02T10:05"), 1, 1, 1, ["L2"], False, 0, 1, 1, 0, 1, 0),
    ("r3", "delivered", *NO_BOUNCE, 1, 1, 0, 0, 0,
     None, None, 0, 1, 1, ["L1"], False, 0, 0, 0, 0, 1, 0),
    # A GET and then a POST on the unsubscribe URL: one page view, and unsubscribed.
    ("r4", "delivered", *NO_BOUNCE, 1, 1, 0, 0, 0,
     utc("2026-12-03T07:00"), utc("2026-12-03T07:00"), 1, 0, 0, [], True, 1, 0, 1, 0, 0, 0),
    ("r5", "bounced", "hard", "user_unknown", "550 5.1.1 <*@*>: user unknown", 1, 0, 1, 0, 0,
     None, None, 0, 0, 0, [], False, 0, 0, 0, 0, 0, 0),
    # Deferred, then bounced: the bounce is the latest MTA event.
    ("r6", "bounced", "soft", "mailbox_full", "552 5.2.2 <*@*>: mailbox full", 1, 0, 0, 1, 0,
     None, None, 0, 0, 0, [], False, 0, 0, 0, 0, 0, 0),
    # Expired without a reason or a diagnostic_group (only the raw diagnostic).
    ("r7", "expired", "soft", "expired", None, 1, 0, 0, 1, 0,
     None, None, 0, 0, 0, [], False, 0, 0, 0, 0, 0, 0),
    ("r8", "deferred_pending", *NO_BOUNCE, 1, 0, 0, 0, 0,
     None, None, 0, 0, 0, [], False, 0, 0, 0, 0, 0, 0),
    ("r9", "rejected", *NO_BOUNCE, 1, 0, 0, 0, 1,
     None, None, 0, 0, 0, [], False, 0, 0, 0, 0, 0, 0),
]
SUMMARY_COLUMNS = SUMMARY_SCHEMA.names[1:-2]


def summary_rows(path: Path) -> list[tuple]:
    table = pq.read_table(path)
    return [tuple(row[name] for name in SUMMARY_COLUMNS) for row in table.to_pylist()]


def summary_files(store: Path) -> list[str]:
    folder = store / SUMMARIES
    return sorted(os.path.relpath(os.path.join(top, name), folder)
                  for top, _, names in os.walk(folder) for name in names)


def read_summaries_glob(store: Path) -> list[tuple]:
    pattern = str(store / SUMMARIES / "*" / "*.parquet")
    return duckdb.sql(
        "SELECT delivery_id, recipient_id, first_event_date FROM read_parquet($pattern, "
        "hive_partitioning = true) ORDER BY ALL", params={"pattern": pattern}).fetchall()


@pytest.fixture(scope="module")
def nightly_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recipients")
    build_sample_store(root / "store")
    run_nightly(str(root / "store"), root / "out", SAMPLE_TIMEZONE, REPORT_DATE)
    return root / "store"


def test_summary_file_layout(nightly_store: Path) -> None:
    hashed = summary_file_stem(UNSAFE_DELIVERY_ID)

    assert hashed.startswith("delivery.id-")
    assert summary_files(nightly_store) == sorted([
        "first_event_date=2026-12-02/delivery-d1.parquet",
        "first_event_date=2026-12-03/delivery-d2.parquet",
        f"first_event_date=2026-12-03/{hashed}.parquet",
    ])


def test_summary_rows_of_newsletter(nightly_store: Path) -> None:
    path = nightly_store / SUMMARIES / "first_event_date=2026-12-02" / "delivery-d1.parquet"

    assert summary_rows(path) == D1_SUMMARIES


def test_summary_schema_and_run_columns(nightly_store: Path) -> None:
    path = nightly_store / SUMMARIES / "first_event_date=2026-12-02" / "delivery-d1.parquet"
    table = pq.read_table(path)

    assert table.schema.remove_metadata() == SUMMARY_SCHEMA
    assert set(table.column("delivery_id").to_pylist()) == {"d1"}
    assert set(table.column("report_date").to_pylist()) == {REPORT_DATE}
    # Local midnight after 3 December in Paris (UTC+1).
    assert set(table.column("counted_until").to_pylist()) == {utc("2026-12-03T23:00")}


def test_summary_rows_without_mta_data(nightly_store: Path) -> None:
    d2 = nightly_store / SUMMARIES / "first_event_date=2026-12-03" / "delivery-d2.parquet"
    hashed = (nightly_store / SUMMARIES / "first_event_date=2026-12-03"
              / f"{summary_file_stem(UNSAFE_DELIVERY_ID)}.parquet")

    assert summary_rows(d2) == [
        ("ra", "unknown", *NO_BOUNCE, 0, 0, 0, 0, 0, utc("2026-12-03T08:00"),
         utc("2026-12-03T08:00"), 1, 1, 1, ["k9"], False, 0, 0, 1, 0, 1, 0),
        ("rb", "unknown", *NO_BOUNCE, 0, 0, 0, 0, 0, None, None,
         0, 1, 1, ["k10"], False, 0, 0, 0, 0, 1, 0),
    ]
    assert pq.read_table(hashed).column("delivery_id").to_pylist() == [UNSAFE_DELIVERY_ID]
    assert pq.read_table(hashed).column("recipient_id").to_pylist() == ["rz"]


def test_summaries_read_with_glob(nightly_store: Path) -> None:
    rows = read_summaries_glob(nightly_store)

    assert len(rows) == 14
    assert len({(delivery, recipient) for delivery, recipient, _ in rows}) == 14
    assert {(delivery, day) for delivery, _, day in rows} == {
        ("d1", date(2026, 12, 2)), ("d2", date(2026, 12, 3)),
        (UNSAFE_DELIVERY_ID, date(2026, 12, 3))}


def test_rerun_replaces_summaries(tmp_path: Path) -> None:
    store = tmp_path / "store"
    build_sample_store(store)
    run_nightly(str(store), tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE)
    first = summary_files(store)

    run_nightly(str(store), tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE)

    assert summary_files(store) == first
    assert len(read_summaries_glob(store)) == 14


def test_rerun_moves_summary_of_earlier_event(tmp_path: Path) -> None:
    store = tmp_path / "store"
    build_sample_store(store)
    run_nightly(str(store), tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE)

    # A backfill adds an open of d2 two days before its first event.
    write_events(store, [event_row(event_type="open", event_time="2026-12-01T08:00:00Z",
                                   delivery_id="d2", recipient_id="rc", http_method="GET")],
                 file_stem="mx9-tracking-0")
    run_nightly(str(store), tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE)

    files = summary_files(store)
    assert "first_event_date=2026-12-01/delivery-d2.parquet" in files
    assert "first_event_date=2026-12-03/delivery-d2.parquet" not in files
    rows = read_summaries_glob(store)
    assert len(rows) == 15
    assert [row for row in rows if row[0] == "d2"] == [
        ("d2", recipient, date(2026, 12, 1)) for recipient in ("ra", "rb", "rc")]


def test_summary_counts_classes(tmp_path: Path) -> None:
    # Classes written by hand: the counts depend only on event_classes' columns.
    def hit(event_id: str, event_type: str, **extra: object) -> dict:
        return event_row(event_id=event_id, event_type=event_type, delivery_id="dc",
                         recipient_id="r1", event_time="2026-12-03T08:00:00Z",
                         http_method="GET", **extra)

    write_events(tmp_path / "store", [
        hit("e1", "open"), hit("e2", "open"), hit("e3", "open"), hit("e4", "open"),
        hit("e5", "click", link_id="L1"), hit("e6", "click", link_id="L2"),
    ])
    classes = [("e1", "human"), ("e2", "machine_prefetch"),
               ("e3", "proxy_open"), ("e5", "scanner_click"), ("e6", "unknown")]
    period = make_period(REPORT_DATE, SAMPLE_TIMEZONE, 30)
    con = duckdb.connect()
    active = m.find_active_deliveries(
        con, events_dataset(open_store(str(tmp_path / "store"))), period)
    m.load_events(con, active, period)
    m.set_link_types(con, {})
    con.execute("CREATE TEMP TABLE event_classes AS SELECT event_id, class, []::VARCHAR[] AS reasons "
                "FROM (VALUES " + ", ".join(f"('{e}', '{c}')" for e, c in classes) +
                ") AS v(event_id, class)")
    m.create_figure_view(con)

    compute_summaries(con, REPORT_DATE, period.end_utc)
    row = fetch_summaries(con).to_pylist()[0]

    # e4 has no class, so it counts as neither human nor machine.
    assert (row["opens"], row["human_opens"], row["machine_opens"]) == (4, 2, 1)
    assert (row["clicks"], row["human_clicks"], row["machine_clicks"]) == (2, 1, 1)
    assert row["link_ids"] == ["L1", "L2"]


def write_seed_store(store: Path) -> None:
    """Write delivery ds: one recipient id with three addresses of one message (delivered,
    bounced, still deferred), and an address that bounced soft and was delivered later."""
    def mta(recipient: str, event_type: str, time: str, key: str, **extra: object) -> dict:
        return event_row(event_type=event_type, event_time=time, delivery_id="ds",
                         recipient_id=recipient, queue_id="Q1", recipient_key=key, **extra)

    write_events(store, [
        mta("seed", "sent", "2026-12-03T08:00:00Z", "k1"),
        mta("seed", "bounced", "2026-12-03T08:00:00Z", "k2", bounce_type="hard",
            bounce_reason="user_unknown", diagnostic_group="550 5.1.1 <*@*>: user unknown"),
        mta("seed", "deferred", "2026-12-03T08:00:00Z", "k3", bounce_type="soft"),
        mta("retry", "bounced", "2026-12-03T08:00:00Z", "k4", bounce_type="soft",
            bounce_reason="mailbox_full"),
        mta("retry", "sent", "2026-12-03T09:00:00Z", "k4"),
    ], file_stem="mx1-mta-0")


def test_summary_of_seed_addresses(tmp_path: Path) -> None:
    write_seed_store(tmp_path / "store")

    run_nightly(str(tmp_path / "store"), tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE)

    path = tmp_path / "store" / SUMMARIES / "first_event_date=2026-12-03" / "delivery-ds.parquet"
    assert summary_rows(path) == [
        ("retry", "delivered", *NO_BOUNCE, 1, 1, 0, 1, 0,
         None, None, 0, 0, 0, [], False, 0, 0, 0, 0, 0, 0),
        ("seed", "mixed", "hard", "user_unknown", "550 5.1.1 <*@*>: user unknown", 3, 1, 1, 0, 0,
         None, None, 0, 0, 0, [], False, 0, 0, 0, 0, 0, 0),
    ]


@pytest.mark.parametrize(("value", "expected"), [
    ("d1", "delivery-d1"),
    ("A_b-9", "delivery-A_b-9"),
    ("../x", "delivery.id-"),
    ("a\r\nb", "delivery.id-"),
    ("x" * 65, "delivery.id-"),
    ("d1\n", "delivery.id-"),
], ids=["plain", "underscore-dash", "dot-slash", "crlf", "too-long", "trailing-newline"])
def test_safe_file_stem(value: str, expected: str) -> None:
    stem = safe_file_stem("delivery", value)

    assert stem.startswith(expected)
    assert re.fullmatch(r"delivery-[A-Za-z0-9_-]{1,64}|delivery\.id-[0-9a-f]{24}", stem)


# The recipient command.

def write_config(root: Path, store: Path) -> Path:
    path = root / "clicktrail.toml"
    path.write_text(
        f'[store]\nurl = "{store.as_uri()}"\n\n'
        f'[report]\ntimezone = "{SAMPLE_TIMEZONE}"\noutput_dir = "{root / "reports"}"\n',
        encoding="utf-8",
    )
    return path


def recipient(config: Path, *args: str):
    return CliRunner().invoke(main, ["recipient", "--config", str(config), *args])


class TableRows(HTMLParser):
    """Collect the text of each cell of one table, found by its class, row by row."""

    def __init__(self, table_class: str) -> None:
        super().__init__()
        self.table_class = table_class
        self.inside = False
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table" and self.table_class in (dict(attrs).get("class") or "").split():
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag == "td":
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False
        elif tag == "td" and self.cell is not None:
            self.rows[-1].append(" ".join(" ".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def table_rows(html: str, table_class: str) -> list[list[str]]:
    parser = TableRows(table_class)
    parser.feed(html)
    return [row for row in parser.rows if row]


def pdf_text(path: Path) -> str:
    """Return the PDF's text in reading order, with each run of white space as one space."""
    completed = subprocess.run(["pdftotext", str(path), "-"], check=True,
                               capture_output=True, text=True)
    return " ".join(completed.stdout.split())


@pytest.fixture(scope="module")
def sample_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recipient-command")
    build_sample_store(root / "store")
    return write_config(root, root / "store")


# r1's events, deduplicated (the store contains two copies of the first open and click). The open
# of delivery "old" in October is in summer time (CEST).
R1_HISTORY = [
    ["2026-10-01 12:00:00 CEST", "Delivery old", "open GET", "", "", "not classified yet"],
    ["2026-12-02 09:01:00 CET", "December newsletter", "sent", "", "", ""],
    ["2026-12-02 10:10:00 CET", "December newsletter", "open GET", "", "", "not classified yet"],
    ["2026-12-02 10:11:00 CET", "December newsletter", "click GET",
     "Offer https://www.example.com/offer", "", "not classified yet"],
    ["2026-12-02 10:12:00 CET", "December newsletter", "unsubscribe page view HEAD", "", "", ""],
    ["2026-12-02 10:40:00 CET", "December newsletter", "open GET", "", "", "not classified yet"],
    ["2026-12-03 11:00:00 CET", "December newsletter", "click GET",
     "Offer https://www.example.com/offer", "", "not classified yet"],
]


def test_recipient_html_rows(sample_config: Path) -> None:
    result = recipient(sample_config, "r1")
    target = sample_config.parent / "reports" / "recipients" / "recipient-r1.html"

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(target)
    assert "7 events of the recipient in 2 deliveries" in result.stderr
    html = target.read_text(encoding="utf-8")
    assert table_rows(html, "history") == R1_HISTORY
    assert '<a href="https://www.example.com/offer">' in html


def test_recipient_html_totals(sample_config: Path) -> None:
    recipient(sample_config, "r1")
    html = (sample_config.parent / "reports" / "recipients" / "recipient-r1.html").read_text()

    assert table_rows(html, "totals") == [
        ["December newsletter d1", "delivered",
         "2 human 0 machine 0 not classified yet 2", "2 human 0 machine 0 not classified yet 2",
         "1", "no", "0", "2026-12-02 10:10 CET 2026-12-02 10:40 CET"],
        ["Delivery old old", "unknown", "1 human 0 machine 0 not classified yet 1",
         "0 human 0 machine 0", "0", "no", "0", "2026-10-01 12:00 CEST 2026-10-01 12:00 CEST"],
    ]


def test_recipient_unsubscribed_and_hostile_agent(sample_config: Path) -> None:
    result = recipient(sample_config, "r4")
    html = Path(result.stdout.strip()).read_text(encoding="utf-8")

    assert result.exit_code == 0, result.output
    assert [row[2] for row in table_rows(html, "history")] == [
        "sent", "open GET", "unsubscribe page view GET", "unsubscribe POST"]
    assert table_rows(html, "totals")[0][5] == "yes"
    # The client column shows what ua-parser makes of the user agent, never the agent itself.
    assert HOSTILE_AGENT not in html
    assert "<script>" not in html


def test_recipient_bounce_details(sample_config: Path) -> None:
    result = recipient(sample_config, "r6")
    html = Path(result.stdout.strip()).read_text(encoding="utf-8")

    assert [row[2:] for row in table_rows(html, "history")] == [
        ["deferred soft · refused", "451 4.7.1 <*@*>: greylisted, try again later", ""],
        ["bounced soft · mailbox full", "552 5.2.2 <*@*>: mailbox full", ""]]
    assert '<td colspan="2" class="mono muted">552 5.2.2 &lt;*@*&gt;: mailbox full</td>' in html
    assert table_rows(html, "totals")[0][1] == (
        "bounced soft · mailbox full 552 5.2.2 <*@*>: mailbox full")


def test_recipient_pdf_text(sample_config: Path) -> None:
    result = recipient(sample_config, "--format", "pdf", "r1")
    target = sample_config.parent / "reports" / "recipients" / "recipient-r1.pdf"

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(target)
    text = pdf_text(target)
    for expected in ("Recipient r1", "Totals per delivery",
                     "December newsletter delivered 2 human 0 machine 0 not classified yet 2",
                     "2026-10-01 12:00:00 CEST Delivery old open GET",
                     "2026-12-02 10:11:00 CET December newsletter click GET",
                     "2026-12-02 10:12:00 CET December newsletter unsubscribe page view HEAD",
                     "Offer https:// www.example.com/offer", "not classified yet",
                     "Page 1 of 1"):
        assert expected in text, expected


def test_recipient_classes_from_store(tmp_path: Path) -> None:
    build_sample_store(tmp_path / "store")
    config = write_config(tmp_path, tmp_path / "store")
    first_open, first_click = duckdb.sql(
        "SELECT event_id FROM read_parquet($pattern) WHERE recipient_id = 'r1' "
        "AND delivery_id = 'd1' AND event_type IN ('open', 'click') "
        "GROUP BY event_id ORDER BY min(event_time) LIMIT 2",
        params={"pattern": str(tmp_path / "store" / "events" / "*" / "*.parquet")}).fetchall()
    # Only two of r1's four opens and clicks are classified: the rest show "not classified yet".
    write_classified(tmp_path / "store", "2026-12-02", [
        {"event_id": first_open[0], "delivery_id": "d1", "event_type": "open",
         "class": "machine_prefetch", "reasons": ["apple_mpp_network", "within_minutes"]},
        {"event_id": first_click[0], "delivery_id": "d1", "event_type": "click",
         "class": "human", "reasons": []},
    ])

    # A file that a classifier is still writing, under a hidden temporary name, is not read.
    partial = tmp_path / "store" / "classified" / "event_date=2026-12-03" / ".part.parquet.tmp-1"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"PAR1 not finished")

    result = recipient(config, "r1")
    html = Path(result.stdout.strip()).read_text(encoding="utf-8")

    assert result.exit_code == 0, result.output
    assert [row[5] for row in table_rows(html, "history")] == [
        "not classified yet", "", "machine_prefetch apple_mpp_network, within_minutes", "human",
        "", "not classified yet", "not classified yet"]
    totals = table_rows(html, "totals")[0]
    assert totals[2] == "2 human 0 machine 1 not classified yet 1"
    assert totals[3] == "2 human 1 machine 0 not classified yet 1"


def test_recipient_seed_addresses_totals(tmp_path: Path) -> None:
    write_seed_store(tmp_path / "store")
    config = write_config(tmp_path, tmp_path / "store")

    result = recipient(config, "seed")
    html = Path(result.stdout.strip()).read_text(encoding="utf-8")

    assert result.exit_code == 0, result.output
    assert table_rows(html, "totals")[0][1] == (
        "mixed hard · user unknown 550 5.1.1 <*@*>: user unknown 3 addresses: 1 delivered, "
        "1 hard and 0 soft bounces, 0 rejected")
    assert [row[2:4] for row in table_rows(html, "history")] == [
        ["sent", ""], ["bounced hard · user unknown", "550 5.1.1 <*@*>: user unknown"],
        ["deferred soft", ""]]


def test_history_row_limit(tmp_path: Path) -> None:
    build_sample_store(tmp_path / "store")
    store = open_store(str(tmp_path / "store"))

    history = load_history(store, "r1", max_rows=2)
    target = write_history(history, ZoneInfo(SAMPLE_TIMEZONE), "html", tmp_path / "r1.html")

    assert history.total_events == 7
    assert len(history.rows) == 2
    assert history.deliveries[0].summary["opens"] == 2
    html = target.read_text(encoding="utf-8")
    assert table_rows(html, "history") == R1_HISTORY[:2]
    assert "The table shows the first 2 of 7 events; the totals count all of them." in html


def test_recipient_output_option(sample_config: Path, tmp_path: Path) -> None:
    target = tmp_path / "history.pdf"

    result = recipient(sample_config, "--format", "pdf", "--output", str(target), "ra")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(target)
    assert target.read_bytes().startswith(b"%PDF-")
    assert os.listdir(tmp_path) == ["history.pdf"]


def test_recipient_unwritable_output_exit_1(sample_config: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    target = tmp_path / "a-file" / "r1.html"

    result = recipient(sample_config, "--output", str(target), "r1")

    assert result.exit_code == 1
    assert f"Error: cannot write {target}: " in result.stderr
    assert "check --output or [report] output_dir" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


def test_recipient_without_events_exit_1(sample_config: Path) -> None:
    result = recipient(sample_config, "nobody")

    assert result.exit_code == 1
    assert "Error: no events of recipient 'nobody' in store " in result.stderr
    assert "Traceback" not in result.output
    assert not (sample_config.parent / "reports" / "recipients" / "recipient-nobody.html").exists()


def test_recipient_empty_id_exit_2(sample_config: Path) -> None:
    result = recipient(sample_config, "")

    assert result.exit_code == 2
    assert "Invalid value for RECIPIENT_ID: expected 1-1024 characters, got 0" in result.stderr


def test_recipient_help_has_example() -> None:
    result = CliRunner().invoke(main, ["recipient", "--help"])

    assert result.exit_code == 0
    assert "Example: clicktrail-report recipient --config clicktrail.toml --format pdf" in result.output
    assert "--output FILE" in result.output


def test_recipient_missing_store_exit_1(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "nowhere")

    result = recipient(config, "r1")

    assert result.exit_code == 1
    assert "Error: store not found:" in result.stderr


@pytest.fixture(scope="module")
def hostile_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    write_events(root / "store", [
        event_row(event_type="click", event_time="2026-12-03T08:00:00Z", delivery_id="d9",
                  recipient_id=recipient_id, link_id="k1", url=HOSTILE_URL,
                  user_agent=HOSTILE_AGENT, http_method="GET")
        for recipient_id in HOSTILE_RECIPIENT_IDS
    ])
    return write_config(root, root / "store")


@pytest.mark.parametrize("recipient_id", HOSTILE_RECIPIENT_IDS, ids=["dot-slash", "script", "crlf"])
def test_hostile_recipient_id(hostile_config: Path, recipient_id: str) -> None:
    reports = hostile_config.parent / "reports"

    result = recipient(hostile_config, recipient_id)

    assert result.exit_code == 0, result.output
    target = Path(result.stdout.strip())
    assert target.parent == reports / "recipients"
    assert target.name == f"{safe_file_stem('recipient', recipient_id)}.html"
    assert re.fullmatch(r"recipient\.id-[0-9a-f]{24}\.html", target.name)
    assert sorted(os.listdir(reports)) == ["recipients"]
    html = target.read_text(encoding="utf-8")
    assert "<script>alert(" not in html
    assert 'href="javascript:' not in html
    assert "&lt;script&gt;bad()&lt;/script&gt;" in html


def test_hostile_recipient_id_escaped_in_heading(hostile_config: Path) -> None:
    result = recipient(hostile_config, "<script>alert(1)</script>")
    html = Path(result.stdout.strip()).read_text(encoding="utf-8")

    assert '<span class="mono">&lt;script&gt;alert(1)&lt;/script&gt;</span>' in html


def test_hostile_delivery_id_escaped_in_history(sample_config: Path) -> None:
    result = recipient(sample_config, "rz")
    html = Path(result.stdout.strip()).read_text(encoding="utf-8")

    assert result.exit_code == 0, result.output
    assert "../evil<script>" not in html
    assert table_rows(html, "history")[0][1] == "Delivery ../evil<script>"
    assert "<td>Delivery ../evil&lt;script&gt;</td>" in html


def test_hostile_recipient_id_quoted_in_error(hostile_config: Path) -> None:
    result = recipient(hostile_config, "../y\r\nInjected: line")

    assert result.exit_code == 1
    assert "Error: no events of recipient '../y\\r\\nInjected: line' in store" in result.stderr
    assert "\nInjected" not in result.stderr


# Retention covers the summaries.

def report(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def summarised(tmp_path: Path) -> Path:
    build_sample_store(tmp_path / "store")
    run_nightly(str(tmp_path / "store"), tmp_path / "reports", SAMPLE_TIMEZONE, REPORT_DATE)
    return write_config(tmp_path, tmp_path / "store")


def test_purge_deletes_summary_partitions(summarised: Path) -> None:
    store = summarised.parent / "store"

    result = report("purge", "--config", str(summarised), "--before", "2026-12-03")

    assert result.exit_code == 0, result.output
    assert "deleted summaries/recipients/first_event_date=2026-12-02" in result.output
    assert "kept" in result.stderr
    assert sorted(os.listdir(store / SUMMARIES)) == ["first_event_date=2026-12-03"]


def test_purge_names_summary_partition_key(summarised: Path) -> None:
    (summarised.parent / "store" / SUMMARIES / "event_date=2026-01-01").mkdir()

    result = report("purge", "--config", str(summarised), "--before", "2026-12-03", "--dry-run")

    assert result.exit_code == 0, result.output
    assert ("left alone summaries/recipients/event_date=2026-01-01: not a partition named "
            "first_event_date=YYYY-MM-DD") in result.output
    assert "would delete summaries/recipients/first_event_date=2026-12-02" in result.output


def test_erase_removes_summary_rows(summarised: Path) -> None:
    d1 = summarised.parent / "store" / SUMMARIES / "first_event_date=2026-12-02" / "delivery-d1.parquet"

    result = report("erase-recipient", "--config", str(summarised), "--recipient-id", "r1")

    assert result.exit_code == 0, result.output
    assert f"rewrote {SUMMARIES.as_posix()}/first_event_date=2026-12-02/delivery-d1.parquet" \
        in result.output
    assert [row[0] for row in summary_rows(d1)] == [row[0] for row in D1_SUMMARIES[1:]]
    assert pq.read_table(d1).schema.remove_metadata() == SUMMARY_SCHEMA


def test_erase_of_one_delivery_deletes_emptied_file(summarised: Path) -> None:
    store = summarised.parent / "store"
    hashed = f"{summary_file_stem(UNSAFE_DELIVERY_ID)}.parquet"

    other = report("erase-recipient", "--config", str(summarised), "--recipient-id", "rb",
                   "--delivery-id", "d2")
    only = report("erase-recipient", "--config", str(summarised), "--recipient-id", "rz")

    assert other.exit_code == 0, other.output
    d2 = store / SUMMARIES / "first_event_date=2026-12-03" / "delivery-d2.parquet"
    assert [row[0] for row in summary_rows(d2)] == ["ra"]
    assert only.exit_code == 0, only.output
    assert f"deleted summaries/recipients/first_event_date=2026-12-03/{hashed}: no rows remained" \
        in only.output
    assert not (store / SUMMARIES / "first_event_date=2026-12-03" / hashed).exists()


# The bundled real logs through the agent, then the nightly run: the summaries add up to the
# ground truth of each delivery.

EXPECTED = json.loads((CASES / "expected_demo_logs.json").read_text())


@pytest.fixture(scope="module")
def demo_summaries(demo_reports: Path) -> dict[str, dict[str, int]]:
    # demo_reports is OUTPUT_DIR/2026-12-04 of a run that put the store beside OUTPUT_DIR.
    workdir = demo_reports.parent.parent
    pattern = str(workdir / "store" / SUMMARIES / "*" / "*.parquet")
    relation = duckdb.sql(
        "SELECT delivery_id, count(*) AS recipients, count(DISTINCT recipient_id) AS distinct_ids, "
        "sum(addresses) AS processed, sum(delivered_addresses) AS delivered, "
        "sum(hard_bounced_addresses) AS hard_bounces, "
        "sum(soft_bounced_addresses) AS soft_bounces, sum(rejected_addresses) AS rejected, "
        "count(*) FILTER (status = 'mixed') AS mixed, "
        "sum(opens) AS opens, sum(clicks) AS clicks, sum(mirror_page_views) AS mirror, "
        "count(*) FILTER (opens > 0) AS openers, count(*) FILTER (clicks > 0) AS clickers, "
        "count(*) FILTER (opens > 0 OR clicks > 0) AS openers_or_clickers, "
        "count(*) FILTER (unsubscribed) AS unsubscribers "
        "FROM read_parquet($pattern) GROUP BY delivery_id", params={"pattern": pattern})
    columns = relation.columns
    return {row[0]: dict(zip(columns, row, strict=True)) for row in relation.fetchall()}


@pytest.mark.parametrize("delivery", ["bb08d0", "7d81d5"])
def test_demo_summary_addresses(demo_summaries, delivery: str) -> None:
    summary = demo_summaries[delivery]
    mta = EXPECTED["postfix_runA"][delivery]

    assert summary["recipients"] == summary["distinct_ids"]
    assert summary["processed"] == sum(mta.values())
    assert summary["delivered"] == mta["sent"]
    assert summary["hard_bounces"] == mta["bounced"]
    assert summary["soft_bounces"] == mta["expired"]
    assert summary["rejected"] == mta["rejected"]
    # The logs include seed-list messages whose addresses ended differently.
    assert summary["mixed"] > 0


@pytest.mark.parametrize("delivery", ["bb08d0", "7d81d5", "5a4865", "1534f7", "3440b0", "c51a19"])
def test_demo_summary_engagement(demo_summaries, delivery: str) -> None:
    summary = demo_summaries[delivery]
    hits = EXPECTED["apache_rich"][delivery]
    unique = EXPECTED["apache_unique_rich"][delivery]

    assert summary["opens"] == hits["open"]
    assert summary["clicks"] == hits["click"]
    assert summary["mirror"] == hits.get("mirror", 0)
    assert summary["openers"] == unique["unique_openers"]
    assert summary["clickers"] == unique["unique_clickers"]
    assert summary["unsubscribers"] == unique["unsubscribers"]


def test_summaries_and_history_on_s3(moto_server, s3_bucket, tmp_path: Path) -> None:
    local = tmp_path / "store"
    build_sample_store(local)
    url = f"s3://{s3_bucket}/prefix"
    remote = open_agent_store(url, moto_server.endpoint, s3_server.REGION)
    for top, _, names in os.walk(local):
        for name in names:
            relative = os.path.relpath(os.path.join(top, name), local)
            upload_file(remote, os.path.join(top, name), relative)
    store = open_store(url, moto_server.endpoint, s3_server.REGION)

    def nightly() -> list[str]:
        run_nightly(url, tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE,
                    store_endpoint_override=moto_server.endpoint, store_region=s3_server.REGION)
        selector = pafs.FileSelector(store.path(SUMMARIES.as_posix()), recursive=True)
        root = store.path(SUMMARIES.as_posix()) + "/"
        return sorted(info.path[len(root):] for info in store.filesystem.get_file_info(selector)
                      if info.type == pafs.FileType.File)

    first = nightly()
    backfill = write_events(tmp_path / "backfill", [event_row(
        event_type="open", event_time="2026-12-01T08:00:00Z", delivery_id="d2",
        recipient_id="rc", http_method="GET")], file_stem="mx9-tracking-0")[0]
    upload_file(remote, str(backfill), os.path.relpath(backfill, tmp_path / "backfill"))
    second = nightly()

    hashed = f"{summary_file_stem(UNSAFE_DELIVERY_ID)}.parquet"
    assert first == ["first_event_date=2026-12-02/delivery-d1.parquet",
                     "first_event_date=2026-12-03/delivery-d2.parquet",
                     f"first_event_date=2026-12-03/{hashed}"]
    assert second == ["first_event_date=2026-12-01/delivery-d2.parquet",
                      "first_event_date=2026-12-02/delivery-d1.parquet",
                      f"first_event_date=2026-12-03/{hashed}"]
    with store.filesystem.open_input_file(
            store.path(f"{SUMMARIES.as_posix()}/{second[1]}")) as source:
        d1 = pq.ParquetFile(source).read()
    assert d1.column("recipient_id").to_pylist() == [row[0] for row in D1_SUMMARIES]
    history = load_history(store, "r1")
    assert history.total_events == 7
    assert [totals.delivery_id for totals in history.deliveries] == ["d1", "old"]


def test_erase_deletes_rendered_history(summarised: Path) -> None:
    rendered = report("recipient", "--config", str(summarised), "r1")
    html = Path(rendered.stdout.strip())
    assert rendered.exit_code == 0, rendered.output
    assert html.exists()

    result = report("erase-recipient", "--config", str(summarised), "--recipient-id", "r1")

    assert result.exit_code == 0, result.output
    assert f"deleted {html}" in result.output
    assert not html.exists()
