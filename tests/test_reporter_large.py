"""A large delivery (10,000 links, 100,000 recipients) still renders, with figures that add up."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clicktrail.agent import schema
from clicktrail.reporter.links import MAX_LINK_ROWS
from clicktrail.reporter.nightly import run_nightly
from pypdf import PdfReader

LINKS = 10_000
RECIPIENTS = 100_000
SENT = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def large_store(root: Path) -> dict[str, int]:
    """Write one delivery: every recipient delivered and opening once, every 4th clicking.

    Recipient i clicks link i % LINKS, so every link has RECIPIENTS / 4 / LINKS clicks or one
    more. Returns the expected figures, counted here from the rows themselves.
    """
    recipients = [f"r{i:06d}" for i in range(RECIPIENTS)]
    clickers = range(0, RECIPIENTS, 4)
    rows = {
        "event_type": ["sent"] * RECIPIENTS + ["open"] * RECIPIENTS + ["click"] * len(clickers),
        "recipient_id": recipients * 2 + [recipients[i] for i in clickers],
        "link_id": [None] * (2 * RECIPIENTS) + [f"l{i % LINKS}" for i in clickers],
    }
    count = len(rows["event_type"])
    # Opens and clicks an hour or more after delivery, so that no timing rule applies.
    times = ([SENT] * RECIPIENTS
             + [SENT + timedelta(hours=1, seconds=i % 7200) for i in range(RECIPIENTS)]
             + [SENT + timedelta(hours=3, seconds=i % 7200) for i in clickers])
    columns = {field.name: pa.nulls(count, field.type) for field in schema.EVENT_SCHEMA}
    columns.update(
        event_id=pa.array([schema.event_id("mx1", "big", "0", offset) for offset in range(count)]),
        event_time=pa.array(times, schema.TIMESTAMP),
        event_type=pa.array(rows["event_type"]),
        delivery_id=pa.array(["big"] * count),
        recipient_id=pa.array(rows["recipient_id"]),
        link_id=pa.array(rows["link_id"], pa.string()),
        queue_id=pa.array([f"Q{i}" if i < RECIPIENTS else None for i in range(count)], pa.string()),
        recipient_key=pa.array([f"k{i}" if i < RECIPIENTS else None for i in range(count)],
                               pa.string()),
        http_method=pa.array([None if i < RECIPIENTS else "GET" for i in range(count)], pa.string()),
        user_agent=pa.array([None if i < RECIPIENTS else "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"
                             for i in range(count)], pa.string()),
        source_kind=pa.array(["access_log"] * count),
        source_name=pa.array(["big"] * count),
        source_host=pa.array(["mx1"] * count),
        source_path=pa.array(["/var/log/big.log"] * count),
        source_generation=pa.array(["0"] * count),
        source_offset=pa.array(range(count), pa.int64()),
        ingest_time=pa.array([SENT] * count, schema.TIMESTAMP),
    )
    table = pa.table(columns, schema=schema.EVENT_SCHEMA)
    partition = root / "events" / "event_date=2026-12-02"
    partition.mkdir(parents=True)
    pq.write_table(table, partition / "mx1-big-0-0.parquet")

    catalog = root / "catalog" / "deliveries"
    catalog.mkdir(parents=True)
    links = [{"link_id": f"l{i}", "url": f"https://shop.example.com/product/{i}",
              "label": f"Product {i}", "category": f"category {i % 25}"} for i in range(LINKS)]
    (catalog / "big.json").write_text(json.dumps({
        "delivery_id": "big", "name": "Large catalogue mailing", "sent_at": SENT.isoformat(),
        "content": "big.html", "links": links}))
    # The email draws every link, so the hot clicks page puts a badge on each of them.
    anchors = "".join(f'<a href="https://shop.example.com/product/{i}">Product {i}</a> '
                      for i in range(LINKS))
    (catalog / "big.html").write_text(f"<html><body><p>{anchors}</p></body></html>")
    return {"clicks": len(clickers), "unique_clickers": len(clickers)}


@pytest.fixture(scope="module")
def large_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    expected = large_store(root / "store")
    result = run_nightly(str(root / "store"), root / "out", "Europe/Paris", date(2026, 12, 3))
    return result, expected


def test_large_delivery_figures(large_report):
    result, expected = large_report
    (report,) = result.reports
    metrics = report.metrics

    assert metrics.delivered == RECIPIENTS
    assert metrics.unique_opens == RECIPIENTS
    assert metrics.human.unique_opens == RECIPIENTS
    assert metrics.clicks == expected["clicks"]
    assert metrics.unique_clickers == expected["unique_clickers"]
    assert len(metrics.links) == MAX_LINK_ROWS + 1
    others = metrics.links[-1]
    assert others.other_links == LINKS - MAX_LINK_ROWS
    assert sum(link.clicks for link in metrics.links) == expected["clicks"]


def test_large_delivery_pdf_renders(large_report):
    result, _ = large_report
    (report,) = result.reports
    pdf = result.report_dir / report.pdf_name

    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True,
                          capture_output=True, text=True).stdout

    assert "Large catalogue mailing" in text
    assert f"{LINKS - MAX_LINK_ROWS:,}".replace(",", " ") + " other links with fewer clicks" in text
    assert "Clicks by category" in text
    # Hot clicks: the preview stops after its page budget, and the links it leaves out are
    # summed up.
    assert "the preview stops after about 12 pages" in text
    assert "more links with fewer clicks" in text
    assert len(PdfReader(pdf).pages) < 60
