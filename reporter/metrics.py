"""Every query of the reporter, and the per-delivery figures that docs/glossary.md defines.

The SQL lives here and only here, so a figure in a report and its glossary entry can be checked
against one statement. DuckDB runs it over the pyarrow datasets of the store:

1. load_events copies the events of the active deliveries, deduplicated on event_id, into a
   temporary table `events` (re-uploads and overlapping files store an event more than once).
2. set_link_types loads the catalog's link types into `link_types`.
3. The view `figure_events` gives each event the figure it counts towards; the other
   functions aggregate that view.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
from clicktrail.agent.config import ClassificationConfig

from .catalog import DeliveryCatalog
from .classify import class_counts, classify_events, flagged_per_rule
from .engagement import Engagement
from .links import LinkGroupRow, LinkRow, add_links
from .mta_figures import MTA_EVENT_TYPES, BounceRow, DiagnosticRow, DomainRow, add_mta_breakdowns
from .period import ReportPeriod
from .rates import Rate
from .sections import HUMAN_CLASSES_SQL

MICROSECONDS_PER_HOUR = 3_600_000_000

ACTIVE_DELIVERIES_SQL = """
SELECT DISTINCT delivery_id
FROM events_raw
WHERE event_date BETWEEN $first_utc_date AND $last_utc_date
  AND event_time >= $start AND event_time < $end
  AND delivery_id IS NOT NULL
ORDER BY delivery_id
"""

# Keep one row per event_id. Which copy survives does not matter for the figures (the copies
# are the same line), but the order makes reruns pick the same one.
# NOTE: a delivery's history has no lower date bound, so every partition up to the period's end
# is scanned (with pushdown of the columns and of the delivery ids) on every run.
LOAD_EVENTS_SQL = f"""
CREATE OR REPLACE TEMP TABLE events AS
SELECT event_id, event_time, event_type, delivery_id, recipient_id, link_id, url,
       upper(http_method) AS http_method, user_agent, client_ip, client_network,
       request_anomaly, bounce_type, bounce_reason,
       recipient_domain, diagnostic, diagnostic_group,
       -- One message to one recipient address: the unit of the MTA figures. Recipient ids
       -- cannot serve, because a message to a seed list gives all its addresses one id.
       CASE WHEN event_type IN {MTA_EVENT_TYPES!r}
            THEN coalesce(queue_id, 'NOQUEUE') || '/' || coalesce(recipient_key, recipient_id, event_id)
       END AS message_recipient
FROM events_raw
WHERE event_date <= $last_utc_date
  AND event_time < $end
  AND delivery_id IN (SELECT delivery_id FROM active_deliveries)
QUALIFY row_number() OVER (
    PARTITION BY event_id ORDER BY ingest_time, source_path, source_offset) = 1
"""

RAW_ROWS_SQL = """
SELECT delivery_id, count(*) AS raw_rows
FROM events_raw
WHERE event_date <= $last_utc_date
  AND event_time < $end
  AND delivery_id IN (SELECT delivery_id FROM active_deliveries)
GROUP BY delivery_id
"""

# The figure each event counts towards, and the class of opens and clicks (classify.py). It is
# a table, not a view, because every figure query reads it: the joins and the window run once.
# Clicks on links that the catalog types as unsubscribe or mirror links are page views, not
# clicks, because Adobe Campaign excludes opt-out and mirror-page URLs from clicks. A click on an
# unsubscribe link is an opt-out click. Only a POST unsubscribes (RFC 8058 one-click or a form
# confirmation), because scanners and previews fetch unsubscribe URLs with GET and HEAD.
FIGURE_EVENTS_SQL = f"""
CREATE OR REPLACE TEMP TABLE figure_events AS
WITH classified AS (
  SELECT e.*,
         l.type AS link_type,
         CASE
           WHEN e.event_type = 'open' THEN 'open'
           WHEN e.event_type = 'click' AND l.type = 'unsubscribe' THEN 'unsubscribe_view'
           WHEN e.event_type = 'click' AND l.type = 'mirror' THEN 'mirror_view'
           WHEN e.event_type = 'click' THEN 'click'
           WHEN e.event_type = 'unsubscribe' AND e.http_method = 'POST' THEN 'unsubscription'
           WHEN e.event_type = 'unsubscribe' AND e.http_method IN ('GET', 'HEAD')
             THEN 'unsubscribe_view'
           WHEN e.event_type = 'mirror' THEN 'mirror_view'
           ELSE e.event_type
         END AS figure,
         c.class,
         -- Events that human-only figures keep: every open or click not classed as a machine.
         coalesce(c.class IN {HUMAN_CLASSES_SQL}, e.event_type NOT IN ('open', 'click')) AS human
  FROM events AS e
  LEFT JOIN link_types AS l
    ON l.delivery_id = e.delivery_id AND l.link_id = e.link_id
  LEFT JOIN event_classes AS c USING (event_id)
)
SELECT *,
       -- Hits that human-only hit counts keep: an image proxy caches the pixel, so only its
       -- first hit per recipient counts (and none without a recipient id).
       human AND (class IS DISTINCT FROM 'proxy_open'
                  OR (recipient_id IS NOT NULL
                      AND row_number() OVER (
                            PARTITION BY delivery_id, recipient_id, figure, class
                            ORDER BY event_time, event_id) = 1)) AS human_hit
FROM classified
"""

# Engagement figures, raw and human-only. A person is approximated by (recipient, client
# network, user agent), since tracking logs carry no cookie: "person clicks" and the forwards
# derived from them are estimates (docs/glossary.md).
_ENGAGEMENT = """
  count(*) FILTER (figure = 'open' {hit}) AS {prefix}opens,
  count(DISTINCT recipient_id) FILTER (figure = 'open' {human}) AS {prefix}unique_opens,
  count(DISTINCT recipient_id) FILTER (event_type IN ('open', 'click') {human})
    AS {prefix}opens_including_clicks,
  count(*) FILTER (figure = 'click' {hit}) AS {prefix}clicks,
  count(DISTINCT recipient_id) FILTER (figure = 'click' {human}) AS {prefix}unique_clickers,
  count(DISTINCT (recipient_id, client_ip, user_agent)) FILTER (figure = 'click' {human})
    AS {prefix}person_clicks,"""

DELIVERY_FIGURES_SQL = f"""
SELECT delivery_id,
  count(DISTINCT message_recipient) FILTER (event_type IN {MTA_EVENT_TYPES!r}) AS processed,
  count(DISTINCT message_recipient) FILTER (event_type = 'sent') AS delivered,
  count(DISTINCT message_recipient) FILTER (event_type = 'bounced' AND bounce_type = 'hard')
    AS hard_bounces,
  count(DISTINCT message_recipient) FILTER (
    (event_type = 'bounced' AND bounce_type = 'soft') OR event_type = 'expired')
    AS soft_bounces,
  count(DISTINCT message_recipient) FILTER (
    event_type = 'bounced' AND (bounce_type IS NULL OR bounce_type NOT IN ('hard', 'soft')))
    AS ignored_bounces,
  count(DISTINCT message_recipient) FILTER (event_type = 'rejected') AS rejected,
  count(DISTINCT recipient_id) FILTER (event_type = 'complaint') AS complaints,
  {_ENGAGEMENT.format(prefix="", human="", hit="")}
  {_ENGAGEMENT.format(prefix="human_", human="AND human", hit="AND human_hit")}
  count(DISTINCT recipient_id) FILTER (figure = 'unsubscription') AS unsubscriptions,
  count(*) FILTER (figure = 'unsubscribe_view') AS unsubscribe_page_views,
  count(*) FILTER (figure = 'mirror_view') AS mirror_page_views,
  count(*) AS events,
  epoch_us(min(event_time)) AS first_event_us,
  epoch_us(max(event_time)) AS last_event_us
FROM figure_events
GROUP BY delivery_id
"""

# A recipient is pending when its latest MTA event is a deferral. On equal times a final
# outcome wins over the deferral, because MTAs log both within the same microsecond.
PENDING_SQL = f"""
SELECT delivery_id, count(*) AS deferred_pending
FROM (
  SELECT delivery_id, message_recipient, event_type
  FROM events
  WHERE event_type IN {MTA_EVENT_TYPES!r}
  QUALIFY row_number() OVER (
      PARTITION BY delivery_id, message_recipient
      ORDER BY event_time DESC, (event_type = 'deferred') ASC, event_id) = 1
)
WHERE event_type = 'deferred'
GROUP BY delivery_id
"""

# A source whose newest event is older than this before the end of the period is flagged: its
# agent may have stopped, or the server it reads sent nothing (a quiet MTA, a broken log path).
STALE_AFTER_US = 24 * MICROSECONDS_PER_HOUR

SOURCE_FRESHNESS_SQL = """
SELECT source_host, source_name, source_kind,
       count(DISTINCT event_id) AS events,
       epoch_us(max(event_time)) AS last_event_us,
       epoch_us(max(ingest_time)) AS last_ingest_us
FROM events_raw
WHERE event_date BETWEEN $first_utc_date AND $last_utc_date
  AND event_time >= $start AND event_time < $end
GROUP BY ALL
ORDER BY source_host, source_name, source_kind
"""

# Rejected lines carry no event time, so the period's start applies to ingest_time and every
# rejects partition is read. There is no upper bound: the lines that the agents rejected after
# the period's end, before this run, belong to the period's logs too.
REJECTS_SQL = """
SELECT source_name, source_kind, count(*) AS lines
FROM rejects_raw
WHERE ingest_time >= $start
GROUP BY ALL
ORDER BY source_name, source_kind
"""

UNATTRIBUTED_SQL = """
SELECT event_type, count(DISTINCT event_id) AS events
FROM events_raw
WHERE event_date BETWEEN $first_utc_date AND $last_utc_date
  AND event_time >= $start AND event_time < $end
  AND delivery_id IS NULL
GROUP BY event_type
ORDER BY event_type
"""


@dataclass(frozen=True)
class SourceFreshness:
    """The freshness of one source's data: a row of the data-quality box's freshness table."""

    source_host: str
    source_name: str
    source_kind: str
    events: int
    last_event_us: int
    last_ingest_us: int
    # True when the source's last event is older than STALE_AFTER_US before the period's end.
    stale: bool


@dataclass
class DeliveryMetrics:
    """The raw figures of one delivery, as docs/glossary.md defines them."""

    delivery_id: str
    processed: int = 0
    delivered: int = 0
    hard_bounces: int = 0
    soft_bounces: int = 0
    ignored_bounces: int = 0
    rejected: int = 0
    deferred_pending: int = 0
    complaints: int = 0
    opens: int = 0
    unique_opens: int = 0
    opens_including_clicks: int = 0
    clicks: int = 0
    unique_clickers: int = 0
    person_clicks: int = 0
    human_opens: int = 0
    human_unique_opens: int = 0
    human_opens_including_clicks: int = 0
    human_clicks: int = 0
    human_unique_clickers: int = 0
    human_person_clicks: int = 0
    text_only_messages: int = 0
    unsubscriptions: int = 0
    unsubscribe_page_views: int = 0
    mirror_page_views: int = 0
    events: int = 0
    duplicate_rows: int = 0
    first_event_us: int | None = None
    last_event_us: int | None = None
    links: list[LinkRow] = field(default_factory=list)
    link_groups: list[LinkGroupRow] = field(default_factory=list)
    bounces: list[BounceRow] = field(default_factory=list)
    domains: list[DomainRow] = field(default_factory=list)
    diagnostics: list[DiagnosticRow] = field(default_factory=list)
    # (event type, class) -> hits, and (reason, hits) per classification rule (classify.py)
    classes: dict[tuple[str, str], int] = field(default_factory=dict)
    flagged: list[tuple[str, int]] = field(default_factory=list)

    @property
    def raw(self) -> Engagement:
        return Engagement("all", self.opens, self.unique_opens, self.opens_including_clicks,
                          self.clicks, self.unique_clickers, self.person_clicks, self.delivered,
                          self.text_only_messages)

    @property
    def human(self) -> Engagement:
        return Engagement("human", self.human_opens, self.human_unique_opens,
                          self.human_opens_including_clicks, self.human_clicks,
                          self.human_unique_clickers, self.human_person_clicks, self.delivered,
                          self.text_only_messages)

    def class_hits(self, event_type: str, class_: str) -> int:
        return self.classes.get((event_type, class_), 0)

    @property
    def has_mta_data(self) -> bool:
        return self.processed > 0

    @property
    def delivery_rate(self) -> Rate:
        return Rate(self.delivered, self.processed)

    @property
    def hard_bounce_rate(self) -> Rate:
        return Rate(self.hard_bounces, self.processed)

    @property
    def soft_bounce_rate(self) -> Rate:
        return Rate(self.soft_bounces, self.processed)

    @property
    def unique_open_rate(self) -> Rate:
        return self.raw.open_rate

    @property
    def click_through_rate(self) -> Rate:
        return self.raw.click_through_rate

    @property
    def reactivity(self) -> Rate:
        return self.raw.reactivity

    @property
    def unsubscription_rate(self) -> Rate:
        return Rate(self.unsubscriptions, self.delivered)


def find_active_deliveries(con: duckdb.DuckDBPyConnection, events: ds.Dataset,
                           period: ReportPeriod) -> list[str]:
    """Register the events dataset and list the deliveries with an event in the period."""
    con.register("events_raw", events)
    rows = con.execute(ACTIVE_DELIVERIES_SQL, _period_parameters(period)).fetchall()
    return [row[0] for row in rows]


def load_events(con: duckdb.DuckDBPyConnection, delivery_ids: list[str],
                period: ReportPeriod) -> dict[str, int]:
    """Copy the deduplicated events of these deliveries up to the period's end into `events`.

    Returns the number of duplicate rows dropped per delivery.
    """
    ids = pa.table({"delivery_id": pa.array(delivery_ids, pa.string())})
    con.register("active_deliveries", ids)
    parameters = _period_parameters(period)
    del parameters["start"], parameters["first_utc_date"]

    con.execute(LOAD_EVENTS_SQL, parameters)
    raw_rows = dict(con.execute(RAW_ROWS_SQL, parameters).fetchall())
    kept = dict(con.execute(
        "SELECT delivery_id, count(*) FROM events GROUP BY delivery_id").fetchall())
    return {delivery_id: raw_rows.get(delivery_id, 0) - kept.get(delivery_id, 0)
            for delivery_id in delivery_ids}


def prepare_events(con: duckdb.DuckDBPyConnection, delivery_ids: list[str], period: ReportPeriod,
                   catalogs: dict[str, DeliveryCatalog],
                   rules: ClassificationConfig) -> dict[str, int]:
    """Create the tables every figure reads: events, link_types, event_classes, figure_events.

    Returns the number of duplicate rows dropped per delivery.
    """
    duplicates = load_events(con, delivery_ids, period)
    set_link_types(con, catalogs)
    classify_events(con, rules, catalogs)
    create_figure_view(con)
    return duplicates


def set_link_types(con: duckdb.DuckDBPyConnection, catalogs: dict[str, DeliveryCatalog]) -> None:
    """Load the links of the catalog entries into `link_types` (with label, url and category)."""
    links = [(c.delivery_id, link) for c in catalogs.values() for link in c.links.values()]
    table = pa.table(
        {
            "delivery_id": pa.array([d for d, _ in links], pa.string()),
            "link_id": pa.array([link.link_id for _, link in links], pa.string()),
            "type": pa.array([link.type for _, link in links], pa.string()),
            "label": pa.array([link.label for _, link in links], pa.string()),
            "url": pa.array([link.url for _, link in links], pa.string()),
            "category": pa.array([link.category for _, link in links], pa.string()),
        }
    )
    con.register("link_types", table)


def create_figure_view(con: duckdb.DuckDBPyConnection) -> None:
    """Create the table figure_events from events, link_types and event_classes."""
    con.execute(FIGURE_EVENTS_SQL)


def compute_metrics(con: duckdb.DuckDBPyConnection,
                    catalogs: dict[str, DeliveryCatalog],
                    duplicates: dict[str, int]) -> dict[str, DeliveryMetrics]:
    """Compute every delivery's figures from `events` and `figure_events`."""
    result: dict[str, DeliveryMetrics] = {}
    cursor = con.execute(DELIVERY_FIGURES_SQL)
    columns = [d[0] for d in cursor.description]
    for row in cursor.fetchall():
        values = dict(zip(columns, row, strict=True))
        result[values["delivery_id"]] = DeliveryMetrics(**values)

    for delivery_id, pending in con.execute(PENDING_SQL).fetchall():
        result[delivery_id].deferred_pending = pending


    add_mta_breakdowns(con, result)

    for delivery_id, metrics in result.items():
        metrics.duplicate_rows = duplicates.get(delivery_id, 0)
        catalog = catalogs.get(delivery_id)
        metrics.text_only_messages = catalog.text_only_messages if catalog else 0
    for delivery_id, counts in class_counts(con).items():
        result[delivery_id].classes = counts
    for delivery_id, flagged in flagged_per_rule(con).items():
        result[delivery_id].flagged = flagged

    add_links(con, result, catalogs)
    return result


def count_rejects(con: duckdb.DuckDBPyConnection, rejects: ds.Dataset | None,
                  period: ReportPeriod) -> list[tuple[str, str, int]]:
    """Count the rejected lines per (source name, source kind) ingested since the period began."""
    if rejects is None:
        return []
    con.register("rejects_raw", rejects)
    return con.execute(REJECTS_SQL, {"start": period.start_utc}).fetchall()


def count_unattributed(con: duckdb.DuckDBPyConnection,
                       period: ReportPeriod) -> list[tuple[str, int]]:
    """Count the events of the period that carry no delivery id, per event type."""
    return con.execute(UNATTRIBUTED_SQL, _period_parameters(period)).fetchall()


def source_freshness(con: duckdb.DuckDBPyConnection,
                     period: ReportPeriod) -> list[SourceFreshness]:
    """Return, per source that wrote events in the period, its last event and ingest times."""
    parameters = _period_parameters(period)
    rows = con.execute(SOURCE_FRESHNESS_SQL, parameters).fetchall()
    end_us = int(period.end_utc.timestamp() * 1_000_000)
    return [SourceFreshness(host, name, kind, events, last_event, last_ingest,
                            stale=last_event < end_us - STALE_AFTER_US)
            for host, name, kind, events, last_event, last_ingest in rows]


def _period_parameters(period: ReportPeriod) -> dict[str, object]:
    # event_date is the UTC date, so these bounds let DuckDB skip whole partitions.
    return {
        "start": period.start_utc,
        "end": period.end_utc,
        "first_utc_date": period.start_utc.date(),
        "last_utc_date": period.end_utc.date(),
    }
