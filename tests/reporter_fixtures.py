"""Build small Parquet stores for the reporter tests, laid out exactly as the agent writes them.

Rows are dicts with the columns that matter to a test. The builder fills every other column of
EVENT_SCHEMA (or REJECT_SCHEMA) and writes one file per UTC event_date partition.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from clicktrail.agent import schema

INGEST_TIME = datetime(2026, 12, 4, 1, 0, tzinfo=UTC)
_offsets = itertools.count(1000, 100)


def utc(text: str) -> datetime:
    """Parse `2026-12-02T09:10:00Z` style times used in test tables."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def event_row(**values: Any) -> dict[str, Any]:
    """Fill an event row: provenance defaults, a unique event_id, and times given as strings."""
    offset = next(_offsets)
    row: dict[str, Any] = {field.name: None for field in schema.EVENT_SCHEMA}
    row.update(
        source_kind="access_log",
        source_name="tracking",
        source_host="mx1",
        source_path="/var/log/apache2/tracking-access.log",
        source_generation="0",
        source_offset=offset,
        ingest_time=INGEST_TIME,
    )
    if values.get("event_type") in ("sent", "deferred", "bounced", "expired", "rejected"):
        row.update(source_kind="postfix", source_name="mta", source_path="/var/log/mail.log")
    row.update(values)

    if isinstance(row["event_time"], str):
        row["event_time"] = utc(row["event_time"])
    if row.get("event_id") is None:
        row["event_id"] = schema.event_id("mx1", row["source_name"], "0", offset)
    return row


def write_events(store: Path, rows: list[dict[str, Any]], file_stem: str = "mx1-tracking-0",
                 omit_columns: tuple[str, ...] = ()) -> list[Path]:
    """Write event rows (built with event_row) as one Parquet file per UTC day partition.

    omit_columns leaves columns out of the files, as an agent older than those columns did.
    """
    table_schema = schema.EVENT_SCHEMA
    for name in omit_columns:
        table_schema = table_schema.remove(table_schema.get_field_index(name))
    rows = [{k: v for k, v in row.items() if k not in omit_columns} for row in rows]
    return _write_partitioned(store, schema.EVENTS_DIR, table_schema, rows,
                              "event_time", file_stem)


def reject_row(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "source_kind": "access_log",
        "source_name": "tracking",
        "source_host": "mx1",
        "source_path": "/var/log/apache2/tracking-access.log",
        "source_generation": "0",
        "source_offset": next(_offsets),
        "reason": "no route matched",
        "line": "garbage",
        "line_bytes": 7,
        "ingest_time": INGEST_TIME,
    }
    row.update(values)
    if isinstance(row["ingest_time"], str):
        row["ingest_time"] = utc(row["ingest_time"])
    return row


def write_rejects(store: Path, rows: list[dict[str, Any]],
                  file_stem: str = "mx1-tracking-0") -> list[Path]:
    return _write_partitioned(store, schema.REJECTS_DIR, schema.REJECT_SCHEMA, rows,
                              "ingest_time", file_stem)


def write_catalog(store: Path, entry: dict[str, Any]) -> Path:
    folder = store / schema.CATALOG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{entry['delivery_id']}.json"
    path.write_text(json.dumps(entry), encoding="utf-8")
    return path


def _write_partitioned(store: Path, area: str, table_schema: pa.Schema, rows: list[dict[str, Any]],
                       time_column: str, file_stem: str) -> list[Path]:
    by_day: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_day[row[time_column].astimezone(UTC).date()].append(row)

    paths = []
    for day, day_rows in sorted(by_day.items()):
        folder = store / schema.partition_dir(area, day)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{file_stem}-{day_rows[0]['source_offset']:015d}.parquet"
        pq.write_table(pa.Table.from_pylist(day_rows, schema=table_schema), path)
        paths.append(path)
    return paths


# The sample store: report date 2026-12-03 in Europe/Paris (UTC+1 in December).
SAMPLE_TIMEZONE = "Europe/Paris"
SAMPLE_REPORT_DATE = "2026-12-03"
HOSTILE_URL = 'javascript:alert("x")<script>bad()</script>'
HOSTILE_AGENT = "<script>alert('ua')</script>"
UNSAFE_DELIVERY_ID = "../evil<script>"

NEWSLETTER_CATALOG = {
    "delivery_id": "d1",
    "name": "December newsletter",
    "subject": "Our winter offers",
    "sent_at": "2026-12-02T08:00:00Z",
    "owners": ["crm-team@example.com"],
    "links": [
        {"link_id": "L1", "url": "https://www.example.com/offer", "label": "Offer",
         "type": "click"},
        {"link_id": "L2", "url": "https://www.example.com/shoes", "label": "Shoes",
         "type": "click"},
        {"link_id": "LU", "url": "https://www.example.com/unsub", "label": "Unsubscribe",
         "type": "unsubscribe"},
        {"link_id": "LM", "url": "https://www.example.com/mirror", "label": "View online",
         "type": "mirror"},
        {"link_id": "L3", "url": "https://www.example.com/never", "label": "Never clicked",
         "type": "click"},
    ],
}


def build_sample_store(store: Path) -> None:
    """Write the sample store whose figures the reporter tests check by hand."""
    _write_newsletter(store)
    _write_tracking_only_delivery(store)
    _write_other_events(store)
    write_catalog(store, NEWSLETTER_CATALOG)


def _write_newsletter(store: Path) -> None:
    # Delivery d1 has MTA outcomes for r1-r11 and tracking hits on two UTC days.
    def mta(recipient: str, event_type: str, time: str, **extra: Any) -> dict[str, Any]:
        return event_row(event_type=event_type, event_time=time, delivery_id="d1",
                         recipient_id=recipient, **extra)

    def hit(recipient: str, event_type: str, time: str, **extra: Any) -> dict[str, Any]:
        extra.setdefault("http_method", "GET")
        return event_row(event_type=event_type, event_time=time, delivery_id="d1",
                         recipient_id=recipient, **extra)

    greylisted = {"bounce_type": "soft", "bounce_reason": "refused",
                  "diagnostic_group": "451 4.7.1 <*@*>: greylisted, try again later"}
    mta_rows = [
        mta("r1", "sent", "2026-12-02T08:01:00Z", recipient_domain="example.com"),
        mta("r2", "sent", "2026-12-02T08:01:00Z", recipient_domain="example.com"),
        mta("r3", "sent", "2026-12-02T08:01:00Z", recipient_domain="example.org"),
        mta("r4", "sent", "2026-12-02T08:01:00Z", recipient_domain="example.org"),
        mta("r5", "bounced", "2026-12-02T08:01:00Z", recipient_domain="example.com",
            bounce_type="hard", bounce_reason="user_unknown",
            diagnostic="550 5.1.1 <*@example.com>: Recipient address rejected: user unknown",
            diagnostic_group="550 5.1.1 <*@*>: user unknown"),
        mta("r6", "deferred", "2026-12-02T08:01:00Z", recipient_domain="example.org",
            **greylisted),
        mta("r6", "bounced", "2026-12-02T12:00:00Z", recipient_domain="example.org",
            bounce_type="soft", bounce_reason="mailbox_full",
            diagnostic_group="552 5.2.2 <*@*>: mailbox full"),
        mta("r7", "deferred", "2026-12-02T08:01:00Z", recipient_domain="example.net",
            **greylisted),
        # An expiry without diagnostic_group, as stored before that column existed.
        mta("r7", "expired", "2026-12-03T08:01:00Z", recipient_domain="example.net",
            diagnostic="delivery temporarily suspended: connect to mx.example.net"),
        mta("r8", "deferred", "2026-12-02T08:01:00Z", recipient_domain="example.net",
            bounce_type="soft", bounce_reason="unreachable",
            diagnostic_group="connect to mx.example.net[*]:*: Connection timed out"),
        mta("r8", "deferred", "2026-12-03T08:01:00Z", recipient_domain="example.net",
            bounce_type="soft", bounce_reason="unreachable",
            diagnostic_group="connect to mx.example.net[*]:*: Connection timed out"),
        # Rejected by our MTA before the recipient address was parsed, so without a domain.
        mta("r9", "rejected", "2026-12-02T08:00:30Z"),
        mta("r10", "deferred", "2026-12-02T08:01:00Z", recipient_domain="example.net",
            **greylisted),
        mta("r10", "sent", "2026-12-02T08:30:00Z", recipient_domain="example.net"),
        mta("r11", "sent", "2026-12-02T08:01:00Z", recipient_domain="example.com"),
    ]
    tracking_rows = [
        hit("r1", "open", "2026-12-02T09:10:00Z"),
        hit("r1", "click", "2026-12-02T09:11:00Z", link_id="L1"),
        hit("r1", "unsubscribe", "2026-12-02T09:12:00Z", http_method="HEAD"),
        hit("r1", "open", "2026-12-02T09:40:00Z"),
        hit("r1", "click", "2026-12-03T10:00:00Z", link_id="L1"),
        hit("r2", "open", "2026-12-02T10:05:00Z"),
        hit("r2", "click", "2026-12-02T10:06:00Z", link_id="L2"),
        hit("r2", "mirror", "2026-12-02T10:30:00Z"),
        # 00:30 on 2026-12-03 in Paris.
        hit("r3", "click", "2026-12-02T23:30:00Z", link_id="L1"),
        hit("r4", "open", "2026-12-03T07:00:00Z", user_agent=HOSTILE_AGENT),
        hit("r4", "unsubscribe", "2026-12-03T07:01:00Z", http_method="GET"),
        hit("r4", "unsubscribe", "2026-12-03T07:02:00Z", http_method="POST"),
        hit("r10", "click", "2026-12-02T11:00:00Z", link_id="LU"),
        hit("r10", "click", "2026-12-02T11:01:00Z", link_id="LM"),
        # 00:30 on 2026-12-04 in Paris: after the report date, so not counted.
        hit("r2", "open", "2026-12-03T23:30:00Z"),
    ]
    write_events(store, mta_rows, file_stem="mx1-mta-0")
    write_events(store, tracking_rows, file_stem="mx1-tracking-0")

    # A re-upload under another name: copies of three events with the same event_id.
    copies = [dict(row, source_path="/var/log/copy.log") for row in
              (tracking_rows[0], tracking_rows[1], mta_rows[4])]
    write_events(store, copies, file_stem="mx1-copy-0")


def _write_tracking_only_delivery(store: Path) -> None:
    # Delivery d2 has no catalog entry and no MTA events; d3's id is not a plain name.
    rows = [
        event_row(event_type="open", event_time="2026-12-03T08:00:00Z", delivery_id="d2",
                  recipient_id="ra", http_method="GET"),
        event_row(event_type="click", event_time="2026-12-03T08:01:00Z", delivery_id="d2",
                  recipient_id="ra", link_id="k9", url="https://shop.example.net/a",
                  http_method="GET"),
        event_row(event_type="click", event_time="2026-12-03T08:02:00Z", delivery_id="d2",
                  recipient_id="rb", link_id="k10", url=HOSTILE_URL, http_method="GET",
                  user_agent=HOSTILE_AGENT),
        event_row(event_type="open", event_time="2026-12-03T09:00:00Z",
                  delivery_id=UNSAFE_DELIVERY_ID, recipient_id="rz", http_method="GET"),
    ]
    write_events(store, rows, file_stem="mx2-tracking-0")


# Delivery "dd" of the domain store: processed message recipients per domain. big.example also
# receives the seed list's message, and x.example and y.example receive only that message.
DOMAIN_SIZES = {"big.example": 6, "mid.example": 4,
                **{f"{letter}.example": 2 for letter in "cdefghijkl"}}
SEED_DOMAINS = ("big.example", "x.example", "y.example")


def build_domain_store(store: Path) -> None:
    """Write delivery "dd": 14 recipient domains, a seed list and more than 10 diagnostics."""
    def mta(recipient: str, event_type: str, domain: str, **extra: Any) -> dict[str, Any]:
        return event_row(event_type=event_type, event_time="2026-12-02T08:01:00Z",
                         delivery_id="dd", recipient_id=recipient, recipient_domain=domain,
                         **extra)

    def hit(recipient: str, event_type: str, **extra: Any) -> dict[str, Any]:
        return event_row(event_type=event_type, event_time="2026-12-02T10:00:00Z",
                         delivery_id="dd", recipient_id=recipient, http_method="GET", **extra)

    greylisted = {"bounce_type": "soft", "bounce_reason": "refused",
                  "diagnostic_group": "451 4.7.1 <*@*>: greylisted, try again later"}
    # Every recipient is sent the message, except one hard bounce and one expiry.
    failures = {
        "big.example-6": ("bounced", {"bounce_type": "hard", "bounce_reason": "user_unknown",
                                      "diagnostic_group": "550 5.1.1 <*@*>: user unknown"}),
        "mid.example-4": ("expired", {"diagnostic_group": "delivery temporarily suspended: "
                                                          "connection timed out"}),
    }
    rows = []
    for domain, size in DOMAIN_SIZES.items():
        for number in range(1, size + 1):
            recipient = f"{domain}-{number}"
            event_type, extra = failures.get(recipient, ("sent", {}))
            rows.append(mta(recipient, event_type, domain, **extra))

    # Four greylisted recipients, big.example-1 twice, and one throttling diagnostic per
    # small domain.
    rows += [mta(f"big.example-{n}", "deferred", "big.example", **greylisted)
             for n in (1, 1, 2, 3, 4)]
    rows += [mta(f"{letter}.example-1", "deferred", f"{letter}.example", bounce_type="soft",
                 bounce_reason="refused",
                 diagnostic_group=f"421 4.7.0 {letter}.example: too many connections")
             for letter in "cdefghijkl"]

    # One seed list message: three addresses, one recipient id.
    rows += [mta("seed", "sent", domain, queue_id="QSEED", recipient_key=f"key-{domain}")
             for domain in SEED_DOMAINS]
    write_events(store, rows, file_stem="mx1-mta-0")

    # Deferrals stored by an agent older than diagnostic_group: the raw diagnostic groups them.
    timed_out = "connect to mx.mid.example[192.0.2.4]:25: Connection timed out"
    old_rows = [mta(f"mid.example-{n}", "deferred", "mid.example", bounce_type="soft",
                    bounce_reason="unreachable", diagnostic=timed_out) for n in (3, 4)]
    write_events(store, old_rows, file_stem="mx0-mta-0", omit_columns=("diagnostic_group",))

    write_events(store, [
        hit("big.example-1", "open"),
        hit("big.example-2", "click", link_id="L1"),
        hit("seed", "open"),
        hit("seed", "open"),
        hit("seed", "click", link_id="L1"),
        hit("k.example-1", "open"),
        # A recipient id with no MTA event, such as a message sent through another MTA.
        hit("ghost", "open"),
        hit("ghost", "click", link_id="L1"),
    ], file_stem="mx1-tracking-0")


def _write_other_events(store: Path) -> None:
    # An old delivery outside the 30-day period, an MTA line with no delivery id, and rejects.
    write_events(store, [
        event_row(event_type="open", event_time="2026-10-01T10:00:00Z", delivery_id="old",
                  recipient_id="r1", http_method="GET"),
        event_row(event_type="sent", event_time="2026-12-03T10:00:00Z", recipient_id=None),
    ], file_stem="mx1-misc-0")
    write_rejects(store, [
        reject_row(ingest_time="2026-12-03T10:00:00Z"),
        reject_row(ingest_time="2026-12-03T11:00:00Z"),
        reject_row(ingest_time="2026-12-03T11:00:00Z", source_name="mta", source_kind="postfix"),
        # Ingested after the period ends, before the run: counted. Before it starts: not.
        reject_row(ingest_time="2026-12-04T10:00:00Z"),
        reject_row(ingest_time="2026-10-01T10:00:00Z"),
    ])


def write_classified(store: Path, day: str, rows: list[dict[str, Any]],
                     file_stem: str = "classified-0") -> Path:
    """Write classification rows (event_id, delivery_id, event_type, class, reasons) into the
    classified/event_date=<day>/ partition, in the store's classified/ layout."""
    table_schema = pa.schema([
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("delivery_id", pa.string()),
        pa.field("event_type", pa.string()),
        pa.field("class", pa.string(), nullable=False),
        pa.field("reasons", pa.list_(pa.string())),
    ])
    folder = store / schema.CLASSIFIED_DIR / f"event_date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{file_stem}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=table_schema), path)
    return path
