"""The event schema and the store layout, shared by the agent and the reporter.

Every source produces rows of EVENT_SCHEMA. The store is Hive-partitioned by event_date (UTC):

    <store>/events/event_date=YYYY-MM-DD/<host>-<source>-<generation>-<first offset>.parquet
    <store>/rejects/event_date=YYYY-MM-DD/<same name>.parquet

Partition values and file names are built only from dates, fixed words and names that the
config validated (host_id, source name), never from strings found in a log.
"""

from __future__ import annotations

import re
from datetime import date

import pyarrow as pa

EVENT_TYPES = (
    # tracking server
    "open",
    "click",
    "unsubscribe",
    "mirror",
    "web",
    # MTA
    "sent",
    "deferred",
    "bounced",
    "expired",
    "rejected",
    "complaint",
)
TRACKING_EVENT_TYPES = ("open", "click", "unsubscribe", "mirror", "web")
BOUNCE_TYPES = ("hard", "soft", "ignored")
BOUNCE_REASONS = (
    "user_unknown",
    "mailbox_full",
    "invalid_domain",
    "account_disabled",
    "refused",
    "unreachable",
    "message_too_large",
    "other",
)

TIMESTAMP = pa.timestamp("us", tz="UTC")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_time", TIMESTAMP, nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("delivery_id", pa.string()),
        pa.field("recipient_id", pa.string()),
        pa.field("link_id", pa.string()),
        pa.field("url", pa.string()),
        # access logs
        pa.field("http_method", pa.string()),
        pa.field("http_status", pa.int16()),
        pa.field("client_ip", pa.string()),
        # The [agent] ip_ranges name of the range that contains the full client address, tagged
        # before the address is truncated. It is null when no range contains it.
        pa.field("client_network", pa.string()),
        pa.field("user_agent", pa.string()),
        pa.field("referer", pa.string()),
        pa.field("forwarded_for", pa.string()),
        pa.field("vhost", pa.string()),
        pa.field("response_bytes", pa.int64()),
        pa.field("response_time_us", pa.int64()),
        # What made the request line unlike a mail client's or browser's: no_protocol (HTTP/0.9
        # style), unknown_protocol, absolute_form, raw_bytes (unescaped non-ASCII). Null when
        # nothing did. The reporter classifies such hits as machine traffic.
        pa.field("request_anomaly", pa.string()),
        # MTA logs
        pa.field("queue_id", pa.string()),
        pa.field("message_id", pa.string()),
        pa.field("recipient_domain", pa.string()),
        # A digest of the lowercased recipient address (blake2b, 8 bytes, hex), which
        # distinguishes the recipients of one message for counting without storing the address.
        pa.field("recipient_key", pa.string()),
        pa.field("smtp_code", pa.int16()),
        pa.field("dsn", pa.string()),
        pa.field("bounce_type", pa.string()),
        pa.field("bounce_reason", pa.string()),
        pa.field("diagnostic", pa.string()),
        # The diagnostic with addresses, ids and numbers masked, so that one cause groups as one
        # line in reports ("550 5.1.1 <*@*>: user unknown").
        pa.field("diagnostic_group", pa.string()),
        pa.field("relay", pa.string()),
        pa.field("join_key", pa.string()),
        # provenance
        pa.field("source_kind", pa.string(), nullable=False),
        pa.field("source_name", pa.string(), nullable=False),
        pa.field("source_host", pa.string(), nullable=False),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("source_generation", pa.string(), nullable=False),
        pa.field("source_offset", pa.int64(), nullable=False),
        pa.field("ingest_time", TIMESTAMP, nullable=False),
    ]
)

REJECT_SCHEMA = pa.schema(
    [
        pa.field("source_kind", pa.string(), nullable=False),
        pa.field("source_name", pa.string(), nullable=False),
        pa.field("source_host", pa.string(), nullable=False),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("source_generation", pa.string(), nullable=False),
        pa.field("source_offset", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        # The raw line, cut to MAX_REJECT_LINE_CHARS so that one hostile line cannot bloat the
        # store; line_bytes keeps the original length.
        pa.field("line", pa.string(), nullable=False),
        pa.field("line_bytes", pa.int64(), nullable=False),
        pa.field("ingest_time", TIMESTAMP, nullable=False),
    ]
)
MAX_REJECT_LINE_CHARS = 8192

EVENTS_DIR = "events"
REJECTS_DIR = "rejects"
CATALOG_DIR = "catalog/deliveries"
CLASSIFIED_DIR = "classified"
SUMMARIES_DIR = "summaries/recipients"

# host_id and source names become parts of file names, so the config accepts only these.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# Ids as the reporter accepts them in file names (catalog entries, report files).
SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


def empty_events() -> pa.Table:
    return EVENT_SCHEMA.empty_table()


def partition_dir(kind: str, day: date) -> str:
    """Return the partition folder of one UTC day, relative to the store root."""
    if kind not in (EVENTS_DIR, REJECTS_DIR, CLASSIFIED_DIR):
        raise ValueError(f"unknown store area {kind!r}")
    return f"{kind}/event_date={day.isoformat()}"


def batch_file_name(host: str, source: str, generation: str, first_offset: int) -> str:
    """Name a batch file from (host, source, generation, first offset).

    The name is the idempotency key of the exactly-once contract: replaying a batch after a
    crash writes the same name, so an upload replaces the object instead of adding a copy.
    """
    for label, value in (("host", host), ("source", source)):
        if not SAFE_NAME.match(value):
            raise ValueError(f"unsafe {label} name {value!r} for a store file name")
    if not re.fullmatch(r"[0-9a-f]{1,64}", generation):
        raise ValueError(f"generation must be lowercase hex, got {generation!r}")
    if first_offset < 0:
        raise ValueError(f"first offset must be >= 0, got {first_offset}")
    return f"{host}-{source}-{generation}-{first_offset:015d}.parquet"


def event_id(host: str, source: str, generation: str, offset: int, index: int = 0) -> str:
    """Derive the dedupe key of an event from where its line sits.

    The key is readable ("mx1:tracking:9395df427e49ec02:1042") so that an audit can go from an
    event back to its line. index distinguishes several events made from one line (a Postfix
    expiry line closes every recipient of its message that was still deferred).
    """
    key = f"{host}:{source}:{generation}:{offset}"
    return f"{key}:{index}" if index else key
