"""One recipient's tracking history: every event of a recipient id, with totals per delivery.

This is the Tracking tab of a recipient profile in Adobe Campaign, read from the store on
demand: all event partitions (filtered on recipient_id while scanning), deduplicated on event_id
as the nightly run does, with the classifications that nightly runs wrote to classified/ and
the delivery catalog. The totals per delivery are the same figures as the recipient summaries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
from clicktrail.agent.schema import CLASSIFIED_DIR

from . import metrics as m
from .catalog import DeliveryCatalog, load_catalog
from .errors import OutputError, ReporterError, StoreError
from .recipients import compute_summaries, fetch_summaries
from .render import make_environment, render_html, shorten, write_pdf
from .store import PARTITION_SCHEMA, Store, events_dataset, safe_file_stem
from .useragents import UNKNOWN, WEBMAIL, describe_user_agent

log = logging.getLogger(__name__)

# Rows shown in one history; the totals still count every event. A seed address collects the
# events of every delivery, and WeasyPrint's layout time grows with the rows.
# NOTE: 5000 is an estimate of what renders in reasonable time, not a measured bound.
MAX_HISTORY_ROWS = 5000
# Characters of a user agent shown in the client column.
MAX_CLIENT_CHARS = 80
# Maximum length of a recipient id that the command accepts, in characters. The agent stores
# ids of at most 128 characters.
MAX_RECIPIENT_ID_CHARS = 1024
# The folder under [report] output_dir for histories rendered without --output.
RECIPIENTS_DIR = "recipients"

EVENT_COLUMNS = ["event_id", "event_time", "event_type", "delivery_id", "recipient_id", "link_id",
                 "url", "http_method", "user_agent", "bounce_type", "bounce_reason",
                 "diagnostic_group", "queue_id", "recipient_key", "ingest_time", "source_path",
                 "source_offset"]

CLASSIFIED_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string()),
        pa.field("delivery_id", pa.string()),
        pa.field("event_type", pa.string()),
        pa.field("class", pa.string()),
        pa.field("reasons", pa.list_(pa.string())),
        pa.field("event_date", pa.date32()),
    ]
)

# The same dedupe as metrics.LOAD_EVENTS_SQL: one row per event_id, the same copy on every run.
LOAD_RECIPIENT_EVENTS_SQL = f"""
CREATE OR REPLACE TEMP TABLE events AS
SELECT event_id, event_time, event_type, delivery_id, recipient_id, link_id, url,
       upper(http_method) AS http_method, user_agent, bounce_type, bounce_reason, diagnostic_group,
       -- One message to one recipient address, as metrics.LOAD_EVENTS_SQL defines it.
       CASE WHEN event_type IN {m.MTA_EVENT_TYPES!r}
            THEN coalesce(queue_id, 'NOQUEUE') || '/' || coalesce(recipient_key, recipient_id, event_id)
       END AS message_recipient
FROM recipient_events_raw
QUALIFY row_number() OVER (
    PARTITION BY event_id ORDER BY ingest_time, source_path, source_offset) = 1
"""

# Two files can classify the same event (a rerun that crashed before removing the old one).
# The first class in name order wins, so the page shows the same one on every run.
LOAD_CLASSES_SQL = """
CREATE OR REPLACE TEMP TABLE event_classes AS
SELECT event_id, class, reasons
FROM classified_raw
WHERE event_id IN (SELECT event_id FROM events WHERE event_type IN ('open', 'click'))
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY class, reasons) = 1
"""

HISTORY_SQL = """
SELECT f.event_time, f.delivery_id, f.event_type, f.figure, f.link_id, f.url, f.http_method,
       f.user_agent, f.bounce_type, f.bounce_reason, f.diagnostic_group, f.class, c.reasons
FROM figure_events AS f
LEFT JOIN event_classes AS c ON c.event_id = f.event_id
ORDER BY f.event_time, f.event_id
LIMIT $max_rows
"""

# The event column's words for each figure of metrics.FIGURE_EVENTS_SQL. A figure missing here
# (an unsubscribe request with another method) is shown as it is.
EVENT_LABELS = {
    "open": "open",
    "click": "click",
    "unsubscription": "unsubscribe",
    "unsubscribe_view": "unsubscribe page view",
    "mirror_view": "mirror page view",
    "web": "web page view",
}
NOT_CLASSIFIED = "not classified yet"


class RecipientNotFoundError(ReporterError):
    """The store has no event of the recipient id."""

    def __init__(self, message: str, *, recipient_id: str) -> None:
        super().__init__(message)
        self.recipient_id = recipient_id


@dataclass(frozen=True)
class HistoryRow:
    event_time: datetime
    delivery_id: str | None
    event: str
    # The HTTP method of a tracking hit, or the bounce type and reason of an MTA event.
    detail: str | None
    diagnostic: str | None
    url: str | None
    link_label: str | None
    client: str | None
    # None for events other than opens and clicks, which the classifier does not class.
    event_class: str | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class DeliveryTotals:
    delivery_id: str
    title: str
    # One row of summaries (recipients.SUMMARY_SCHEMA) as a dict.
    summary: dict
    # Opens and clicks without a classification in classified/.
    unclassified_opens: int
    unclassified_clicks: int


@dataclass(frozen=True)
class RecipientHistory:
    recipient_id: str
    rows: list[HistoryRow]
    # Events of the recipient in the store, deduplicated. rows contains at most MAX_HISTORY_ROWS.
    total_events: int
    deliveries: list[DeliveryTotals]

    @property
    def titles(self) -> dict[str, str]:
        """Map each delivery id to the name the page shows for it."""
        return {totals.delivery_id: totals.title for totals in self.deliveries}


def client_label(user_agent: str | None) -> str | None:
    """Return the client shown for a hit, such as "Outlook on Windows" or "Chrome on Android".

    A browser names itself when the hit came through webmail or a link in a browser. Hits
    without a user agent (MTA events) show nothing.
    """
    if not user_agent:
        return None
    client = describe_user_agent(user_agent)
    name = client.browser if client.mail_client == WEBMAIL else client.mail_client
    if client.os != UNKNOWN:
        name = f"{name} on {client.os}"
    return shorten(name, MAX_CLIENT_CHARS)


def load_history(store: Store, recipient_id: str, *,
                 max_rows: int = MAX_HISTORY_ROWS) -> RecipientHistory:
    """Read every event of recipient_id from the store, with classes and catalog entries.

    Raises RecipientNotFoundError when the store has no event of the id, StoreError when the
    store cannot be read.
    """
    events = events_dataset(store)
    con = duckdb.connect()
    try:
        total = _load_events(con, events, recipient_id)
        if total == 0:
            raise RecipientNotFoundError(
                f"no events of recipient {recipient_id!r} in store {store.url}; check the id "
                "(it is case-sensitive) and that the agent has uploaded its logs",
                recipient_id=recipient_id)

        catalogs = _load_catalogs(con, store)
        m.set_link_types(con, catalogs)
        _load_classes(con, store)
        m.create_figure_view(con)
        # The summaries' report_date and counted_until columns are not shown here.
        now = datetime.now(UTC)
        compute_summaries(con, now.date(), now)
        rows = _history_rows(con, catalogs, max_rows)
        deliveries = _delivery_totals(con, catalogs)
    except (duckdb.Error, pa.ArrowException, OSError) as exc:
        raise StoreError(f"failed to query the store {store.url}: {exc}",
                         store_url=store.url) from exc
    finally:
        con.close()
    log.info("read %d events of one recipient in %d deliveries from %s",
             total, len(deliveries), store.url)
    return RecipientHistory(recipient_id, rows, total, deliveries)


def _load_events(con: duckdb.DuckDBPyConnection, events: ds.Dataset, recipient_id: str) -> int:
    # The filter goes to pyarrow's scanner, which skips row groups by their recipient_id
    # statistics and returns only matching rows. DuckDB reads the stream once.
    scanner = events.scanner(columns=EVENT_COLUMNS,
                             filter=ds.field("recipient_id") == recipient_id)
    con.register("recipient_events_raw", scanner.to_reader())
    con.execute(LOAD_RECIPIENT_EVENTS_SQL)
    con.unregister("recipient_events_raw")
    (total,) = con.execute("SELECT count(*) FROM events").fetchall()[0]
    return total


def _load_catalogs(con: duckdb.DuckDBPyConnection, store: Store) -> dict[str, DeliveryCatalog]:
    delivery_ids = [row[0] for row in con.execute(
        "SELECT DISTINCT delivery_id FROM events WHERE delivery_id IS NOT NULL "
        "ORDER BY delivery_id").fetchall()]
    return {delivery_id: load_catalog(store, delivery_id) for delivery_id in delivery_ids}


def _load_classes(con: duckdb.DuckDBPyConnection, store: Store) -> None:
    # Every partition is read, filtered on the event ids: a classification may sit in a
    # partition other than the event's own if the classifier dates it differently.
    if store.is_dir(CLASSIFIED_DIR):
        classified = ds.dataset(store.path(CLASSIFIED_DIR), filesystem=store.filesystem,
                                format="parquet", schema=CLASSIFIED_SCHEMA,
                                partitioning=ds.partitioning(PARTITION_SCHEMA, flavor="hive"))
        event_ids = [row[0] for row in con.execute(
            "SELECT event_id FROM events WHERE event_type IN ('open', 'click')").fetchall()]
        scanner = classified.scanner(columns=["event_id", "class", "reasons"],
                                     filter=ds.field("event_id").isin(event_ids))
        con.register("classified_raw", scanner.to_reader())
    else:
        empty = CLASSIFIED_SCHEMA.empty_table().select(["event_id", "class", "reasons"])
        con.register("classified_raw", empty)
    con.execute(LOAD_CLASSES_SQL)
    con.unregister("classified_raw")


def _history_rows(con: duckdb.DuckDBPyConnection, catalogs: dict[str, DeliveryCatalog],
                  max_rows: int) -> list[HistoryRow]:
    result = con.execute(HISTORY_SQL, {"max_rows": max_rows})
    columns = [d[0] for d in result.description]
    rows = []
    for values in result.fetchall():
        event = dict(zip(columns, values, strict=True))
        catalog = catalogs.get(event["delivery_id"] or "")
        link = catalog.links.get(event["link_id"] or "") if catalog else None
        classified = event["event_type"] in ("open", "click")
        rows.append(HistoryRow(
            event_time=event["event_time"],
            delivery_id=event["delivery_id"],
            event=EVENT_LABELS.get(event["figure"], event["figure"]),
            detail=_detail(event),
            diagnostic=_diagnostic(event),
            url=event["url"] or (link.url if link else None),
            link_label=link.label if link else None,
            client=client_label(event["user_agent"]),
            event_class=(event["class"] or NOT_CLASSIFIED) if classified else None,
            reasons=tuple(event["reasons"] or ()),
        ))
    return rows


def _diagnostic(event: dict) -> str | None:
    # A sent event's reply ("250 2.0.0 Ok: queued as *") adds nothing to the word "sent".
    if event["event_type"] in m.MTA_EVENT_TYPES and event["event_type"] != "sent":
        return event["diagnostic_group"]
    return None


def _detail(event: dict) -> str | None:
    if event["event_type"] in m.MTA_EVENT_TYPES:
        parts = [event["bounce_type"], (event["bounce_reason"] or "").replace("_", " ") or None]
        return " · ".join(part for part in parts if part) or None
    return event["http_method"]


def _delivery_totals(con: duckdb.DuckDBPyConnection,
                     catalogs: dict[str, DeliveryCatalog]) -> list[DeliveryTotals]:
    totals = []
    for summary in fetch_summaries(con).to_pylist():
        delivery_id = summary["delivery_id"]
        catalog = catalogs[delivery_id]
        totals.append(DeliveryTotals(
            delivery_id=delivery_id,
            title=catalog.name or f"Delivery {delivery_id}",
            summary=summary,
            unclassified_opens=summary["opens"] - summary["human_opens"] - summary["machine_opens"],
            unclassified_clicks=(summary["clicks"] - summary["human_clicks"]
                                 - summary["machine_clicks"]),
        ))
    return totals


def default_output_path(output_dir: str | os.PathLike[str], recipient_id: str,
                        output_format: str) -> Path:
    """Return OUTPUT_DIR/recipients/recipient-<id>.<format>, with a hash for ids that are not
    plain names."""
    name = f"{safe_file_stem('recipient', recipient_id)}.{output_format}"
    return Path(output_dir) / RECIPIENTS_DIR / name


def write_history(history: RecipientHistory, zone: ZoneInfo, output_format: str,
                  target: Path) -> Path:
    """Render the history as HTML or PDF into target, replacing it whole, and return target.

    Raises OutputError when the folder cannot be created or the file cannot be written.
    """
    env = make_environment()
    context = {"history": history, "zone": zone, "generated_at": datetime.now(UTC),
               "max_rows": MAX_HISTORY_ROWS}
    html = render_html(env, "recipient.html.j2", context)

    # A hidden temporary name in the same folder, renamed over the target: a reader never sees
    # half a file, and an interrupted run leaves the previous file.
    temporary = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if output_format == "pdf":
            write_pdf(html, temporary)
        else:
            temporary.write_text(html, encoding="utf-8")
        os.replace(temporary, target)
    except OSError as exc:
        _remove_quietly(temporary)
        raise OutputError(f"cannot write {target}: {exc}; check --output or [report] output_dir",
                          path=str(target)) from exc
    except BaseException:
        _remove_quietly(temporary)
        raise
    log.info("wrote the tracking history of one recipient to %s", target)
    return target


def _remove_quietly(path: Path) -> None:
    # The folder may be missing or be a file, which is the error being reported already.
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
