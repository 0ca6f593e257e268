"""Per-recipient summaries: one row per (delivery, recipient), written to the store each night.

Layout, one file per delivery:

    <store>/summaries/recipients/first_event_date=YYYY-MM-DD/delivery-<delivery_id>.parquet

first_event_date is the UTC day of the delivery's first event in the store, so that
`purge --before D` can delete every summary that counts an event of a day before D. A delivery
id that is not a plain name (agent.schema.SAFE_ID) is replaced by a hash in the file name, as
in the report file names. A rerun writes the same file name and deletes the delivery's file
from any other partition, so a glob over the area reads each (delivery, recipient) once.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from clicktrail.agent import store as agent_store
from clicktrail.agent.schema import SUMMARIES_DIR, TIMESTAMP

from .errors import StoreError
from .metrics import MTA_EVENT_TYPES
from .sections import HUMAN_CLASSES_SQL, SectionInput
from .store import Store, safe_file_stem

log = logging.getLogger(__name__)

# The Hive partition key of the summaries area. The value is the UTC day of the delivery's
# first event, never a string from a log.
PARTITION_KEY = "first_event_date"

SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("delivery_id", pa.string(), nullable=False),
        pa.field("recipient_id", pa.string(), nullable=False),
        # delivered, bounced, expired, rejected, deferred_pending, mixed (the addresses of the
        # recipient id ended differently), or unknown without MTA events
        pa.field("status", pa.string(), nullable=False),
        # The latest address that ended bounced or expired; an expired message is a soft bounce.
        pa.field("bounce_type", pa.string()),
        pa.field("bounce_reason", pa.string()),
        pa.field("diagnostic_group", pa.string()),
        # Message recipients (addresses) as the delivery figures count them: processed,
        # delivered, hard and soft bounces, rejected.
        pa.field("addresses", pa.int64(), nullable=False),
        pa.field("delivered_addresses", pa.int64(), nullable=False),
        pa.field("hard_bounced_addresses", pa.int64(), nullable=False),
        pa.field("soft_bounced_addresses", pa.int64(), nullable=False),
        pa.field("rejected_addresses", pa.int64(), nullable=False),
        pa.field("first_open_time", TIMESTAMP),
        pa.field("last_open_time", TIMESTAMP),
        pa.field("opens", pa.int64(), nullable=False),
        pa.field("clicks", pa.int64(), nullable=False),
        pa.field("links_clicked", pa.int64(), nullable=False),
        pa.field("link_ids", pa.list_(pa.string()), nullable=False),
        pa.field("unsubscribed", pa.bool_(), nullable=False),
        pa.field("unsubscribe_page_views", pa.int64(), nullable=False),
        pa.field("mirror_page_views", pa.int64(), nullable=False),
        pa.field("human_opens", pa.int64(), nullable=False),
        pa.field("machine_opens", pa.int64(), nullable=False),
        pa.field("human_clicks", pa.int64(), nullable=False),
        pa.field("machine_clicks", pa.int64(), nullable=False),
        # The report date of the run, and the instant up to which it counted events.
        pa.field("report_date", pa.date32(), nullable=False),
        pa.field("counted_until", TIMESTAMP, nullable=False),
    ]
)

# A message to a seed list gives several addresses one recipient id, so the status is decided
# per message recipient (address) first: its latest MTA event, where on equal times a final
# outcome wins over a deferral, as in metrics.PENDING_SQL. Labels of expired events follow
# metrics.BOUNCE_REASONS_SQL (soft, reason "expired" if none). The address counts follow
# metrics.DELIVERY_FIGURES_SQL, so they add up to the delivery's figures.
# A class outside HUMAN_CLASSES counts as machine; an event without a class counts as neither.
RECIPIENT_SUMMARY_SQL = f"""
CREATE OR REPLACE TEMP TABLE recipient_summaries AS
WITH mta AS (
  SELECT *
  FROM events
  WHERE event_type IN {MTA_EVENT_TYPES!r} AND recipient_id IS NOT NULL
),
final_states AS (
  SELECT *
  FROM mta
  QUALIFY row_number() OVER (
      PARTITION BY delivery_id, recipient_id, message_recipient
      ORDER BY event_time DESC, (event_type = 'deferred') ASC, event_id) = 1
),
outcomes AS (
  SELECT delivery_id, recipient_id,
         CASE WHEN count(DISTINCT event_type) = 1 THEN any_value(event_type) ELSE 'mixed' END
           AS outcome
  FROM final_states
  GROUP BY delivery_id, recipient_id
),
last_bounces AS (
  SELECT delivery_id, recipient_id,
         CASE WHEN event_type = 'expired' THEN 'soft' ELSE bounce_type END AS bounce_type,
         CASE WHEN event_type = 'expired' THEN coalesce(bounce_reason, 'expired')
              ELSE bounce_reason END AS bounce_reason,
         diagnostic_group
  FROM final_states
  WHERE event_type IN ('bounced', 'expired')
  QUALIFY row_number() OVER (
      PARTITION BY delivery_id, recipient_id ORDER BY event_time DESC, event_id) = 1
),
addresses AS (
  SELECT delivery_id, recipient_id,
    count(DISTINCT message_recipient) AS addresses,
    count(DISTINCT message_recipient) FILTER (event_type = 'sent') AS delivered_addresses,
    count(DISTINCT message_recipient) FILTER (event_type = 'bounced' AND bounce_type = 'hard')
      AS hard_bounced_addresses,
    count(DISTINCT message_recipient) FILTER (
      (event_type = 'bounced' AND bounce_type = 'soft') OR event_type = 'expired')
      AS soft_bounced_addresses,
    count(DISTINCT message_recipient) FILTER (event_type = 'rejected') AS rejected_addresses
  FROM mta
  GROUP BY delivery_id, recipient_id
),
engagement AS (
  SELECT f.delivery_id, f.recipient_id,
    min(f.event_time) FILTER (f.figure = 'open') AS first_open_time,
    max(f.event_time) FILTER (f.figure = 'open') AS last_open_time,
    count(*) FILTER (f.figure = 'open') AS opens,
    count(*) FILTER (f.figure = 'click') AS clicks,
    count(DISTINCT f.link_id) FILTER (f.figure = 'click') AS links_clicked,
    list(DISTINCT f.link_id ORDER BY f.link_id) FILTER (f.figure = 'click' AND f.link_id IS NOT NULL)
      AS link_ids,
    bool_or(f.figure = 'unsubscription') AS unsubscribed,
    count(*) FILTER (f.figure = 'unsubscribe_view') AS unsubscribe_page_views,
    count(*) FILTER (f.figure = 'mirror_view') AS mirror_page_views,
    count(*) FILTER (f.figure = 'open' AND f.human_hit) AS human_opens,
    count(*) FILTER (f.figure = 'open' AND f.class NOT IN {HUMAN_CLASSES_SQL}) AS machine_opens,
    count(*) FILTER (f.figure = 'click' AND f.human_hit) AS human_clicks,
    count(*) FILTER (f.figure = 'click' AND f.class NOT IN {HUMAN_CLASSES_SQL}) AS machine_clicks
  FROM figure_events AS f
  WHERE f.recipient_id IS NOT NULL AND f.delivery_id IS NOT NULL
  GROUP BY f.delivery_id, f.recipient_id
)
SELECT e.delivery_id, e.recipient_id,
       CASE o.outcome
         WHEN 'sent' THEN 'delivered'
         WHEN 'deferred' THEN 'deferred_pending'
         ELSE coalesce(o.outcome, 'unknown')
       END AS status,
       b.bounce_type, b.bounce_reason, b.diagnostic_group,
       coalesce(a.addresses, 0) AS addresses,
       coalesce(a.delivered_addresses, 0) AS delivered_addresses,
       coalesce(a.hard_bounced_addresses, 0) AS hard_bounced_addresses,
       coalesce(a.soft_bounced_addresses, 0) AS soft_bounced_addresses,
       coalesce(a.rejected_addresses, 0) AS rejected_addresses,
       e.first_open_time, e.last_open_time, e.opens, e.clicks, e.links_clicked,
       coalesce(e.link_ids, []) AS link_ids,
       e.unsubscribed, e.unsubscribe_page_views, e.mirror_page_views,
       e.human_opens, e.machine_opens, e.human_clicks, e.machine_clicks,
       $report_date::DATE AS report_date,
       $counted_until::TIMESTAMPTZ AS counted_until
FROM engagement AS e
LEFT JOIN outcomes AS o USING (delivery_id, recipient_id)
LEFT JOIN last_bounces AS b USING (delivery_id, recipient_id)
LEFT JOIN addresses AS a USING (delivery_id, recipient_id)
ORDER BY e.delivery_id, e.recipient_id
"""

FIRST_EVENT_SQL = """
SELECT delivery_id, min(event_time) AS first_event_time
FROM events
WHERE delivery_id IS NOT NULL
GROUP BY delivery_id
"""


@dataclass
class SummaryFiles:
    """The summary files one run wrote and the stale ones it deleted (paths relative to the store)."""

    written: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    rows: int = 0


def compute_summaries(con: duckdb.DuckDBPyConnection, report_date: date,
                      counted_until: datetime) -> None:
    """Create the temp table recipient_summaries from `events`, `figure_events` and
    `event_classes`: one row per (delivery, recipient) with a recipient id."""
    con.execute(RECIPIENT_SUMMARY_SQL, {"report_date": report_date, "counted_until": counted_until})


def fetch_summaries(con: duckdb.DuckDBPyConnection, delivery_id: str | None = None) -> pa.Table:
    """Return the rows of recipient_summaries (of one delivery, or all) in SUMMARY_SCHEMA."""
    if delivery_id is None:
        relation = con.sql("SELECT * FROM recipient_summaries ORDER BY delivery_id, recipient_id")
    else:
        relation = con.sql("SELECT * FROM recipient_summaries WHERE delivery_id = $delivery_id "
                           "ORDER BY recipient_id", params={"delivery_id": delivery_id})
    return relation.to_arrow_table().cast(SUMMARY_SCHEMA)


def write_recipient_summaries(source: SectionInput, scratch: Path) -> SummaryFiles:
    """Compute the summaries of every active delivery and replace their files in the store.

    Runs while the nightly run's connection is open. Parquet files are written in scratch
    first, then copied into the store under their final names. Raises StoreError when the
    store cannot be listed or written; files replaced until then stay replaced.
    """
    period = source.period
    compute_summaries(source.con, period.report_date, period.end_utc)
    first_days = {delivery_id: first.astimezone(UTC).date() for delivery_id, first
                  in source.con.execute(FIRST_EVENT_SQL).fetchall()}
    existing = _existing_files(source.store)

    result = SummaryFiles()
    for delivery_id in sorted(source.catalogs):
        table = fetch_summaries(source.con, delivery_id)
        stem = summary_file_stem(delivery_id)
        keep = None
        if table.num_rows:
            keep = summary_path(first_days[delivery_id], delivery_id)
            _write_file(source.store, table, keep, scratch)
            result.written.append(keep)
            result.rows += table.num_rows
        # Remove the file that an earlier run wrote into another partition (the first event
        # moved after a backfill or a purge), or of a delivery that has no recipient left.
        for stale in existing.get(stem, []):
            if stale != keep:
                _delete_file(source.store, stale)
                result.deleted.append(stale)

    log.info("wrote %d recipient summary rows of %d deliveries to %s/%s; deleted %d stale files",
             result.rows, len(result.written), source.store.url, SUMMARIES_DIR,
             len(result.deleted))
    return result


def summary_file_stem(delivery_id: str) -> str:
    """Name a delivery's summary file by the rule of nightly.report_file_stem."""
    return safe_file_stem("delivery", delivery_id)


def summary_path(first_day: date, delivery_id: str) -> str:
    """Return the store path (relative to the root) of a delivery's summary file."""
    return (f"{SUMMARIES_DIR}/{PARTITION_KEY}={first_day.isoformat()}/"
            f"{summary_file_stem(delivery_id)}.parquet")


def _existing_files(store: Store) -> dict[str, list[str]]:
    # One file per delivery, so the listing grows with the deliveries kept, not the events.
    selector = pafs.FileSelector(store.path(SUMMARIES_DIR), allow_not_found=True, recursive=True)
    try:
        infos = store.filesystem.get_file_info(selector)
    except OSError as exc:
        raise StoreError(f"cannot list {SUMMARIES_DIR}/ in store {store.url}: {exc}",
                         store_url=store.url, transient=True) from exc

    root = store.path(SUMMARIES_DIR).rstrip("/") + "/"
    by_stem: dict[str, list[str]] = defaultdict(list)
    for info in infos:
        relative = info.path[len(root):]
        folder, _, name = relative.rpartition("/")
        # Only files the layout names: one partition folder deep, visible, ending in .parquet.
        if (info.type != pafs.FileType.File or "/" in folder
                or not folder.startswith(f"{PARTITION_KEY}=")
                or name.startswith((".", "_")) or not name.endswith(".parquet")):
            continue
        by_stem[name.removesuffix(".parquet")].append(f"{SUMMARIES_DIR}/{relative}")
    return by_stem


def _write_file(store: Store, table: pa.Table, relative: str, scratch: Path) -> None:
    # upload_file writes a hidden temporary file and renames it on a local store, and sends
    # one PUT to S3, so readers see the previous file or the new one, whole.
    handle, local_path = tempfile.mkstemp(suffix=".parquet", dir=scratch)
    os.close(handle)
    try:
        pq.write_table(table, local_path, compression="zstd")
        agent_store.upload_file(store.agent_store(), local_path, relative)
    except agent_store.StoreError as exc:
        raise StoreError(str(exc), store_url=store.url, transient=exc.transient) from exc
    finally:
        os.unlink(local_path)


def _delete_file(store: Store, relative: str) -> None:
    try:
        store.filesystem.delete_file(store.path(relative))
    except OSError as exc:
        raise StoreError(f"cannot delete {relative} in store {store.url}: {exc}",
                         store_url=store.url, transient=True) from exc
    log.info("deleted stale recipient summary %s from %s", relative, store.url)

