"""Classification of opens and clicks before any figure: who, or what, made each hit.

docs/glossary.md defines the classes. In short:

- human: a person;
- proxy_open: an image proxy fetched the pixel when the recipient opened the message (a real
  open, counted once);
- machine_prefetch: a fetch that no person requested (Apple Mail Privacy Protection, scanners);
- scanner_click: a security gateway or script followed a link;
- unknown: a hit without a user agent that no rule ties to a machine.

Every rule that matches adds a reason, so an audit can see why; the class then comes from the
strongest evidence:

1. identity: the network the agent tagged (client_network), the user agent, a HEAD click, a
   request line no mail client sends (request_anomaly), a click on a hidden trap link;
2. timing, measured from the delivery to the recipient: a click within seconds, several links
   within a burst, an open within a prefetch window.

Identity beats timing, so an image-proxy open that came soon after delivery stays a proxy open.
The rules run as one DuckDB statement over the table `events`; the result is the temp table
`event_classes` (event_id, class, reasons), written to the store by write_classified.
"""

from __future__ import annotations

import logging
from datetime import UTC
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from clicktrail.agent.config import ClassificationConfig
from clicktrail.agent.schema import CLASSIFIED_DIR
from clicktrail.agent.store import upload_file

from .catalog import DeliveryCatalog
from .store import Store

log = logging.getLogger(__name__)

MICROSECONDS = 1_000_000

# A hit on a link of this catalog type is a machine: no person can see the link. Senders add
# one to catch security gateways that follow every link.
HIDDEN_LINK_TYPE = "hidden"

CLASSIFIED_SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("delivery_id", pa.string()),
    pa.field("event_type", pa.string(), nullable=False),
    pa.field("class", pa.string(), nullable=False),
    pa.field("reasons", pa.list_(pa.string()), nullable=False),
])

# The user agents of the hits, matched once each against the rules in ua_rules.
USER_AGENT_MATCHES_SQL = """
CREATE OR REPLACE TEMP TABLE user_agent_matches AS
SELECT a.user_agent,
       list(r.kind || ':' || r.name ORDER BY r.position) AS matches
FROM (SELECT DISTINCT user_agent FROM events
      WHERE event_type IN ('open', 'click') AND user_agent IS NOT NULL) AS a
JOIN ua_rules AS r ON regexp_matches(a.user_agent, r.pattern)
GROUP BY a.user_agent
"""

# When a recipient got the message: its first MTA 'sent' event, else the catalog's sent_at.
DELIVERED_AT_SQL = """
CREATE OR REPLACE TEMP TABLE delivered_at AS
SELECT delivery_id, recipient_id, min(event_time) AS delivered_at
FROM events
WHERE event_type = 'sent' AND recipient_id IS NOT NULL
GROUP BY ALL
"""

EVENT_CLASSES_SQL = """
CREATE OR REPLACE TEMP TABLE event_classes AS
WITH hits AS (
  SELECT e.event_id, e.event_type, e.delivery_id, e.recipient_id, e.link_id, e.event_time,
         e.http_method, e.user_agent, e.client_network, e.request_anomaly,
         l.type AS link_type,
         coalesce(m.matches, []::VARCHAR[]) AS ua_matches,
         epoch_us(e.event_time) - epoch_us(coalesce(d.delivered_at, s.sent_at)) AS since_delivery_us
  FROM events AS e
  LEFT JOIN link_types AS l ON l.delivery_id = e.delivery_id AND l.link_id = e.link_id
  LEFT JOIN user_agent_matches AS m ON m.user_agent = e.user_agent
  LEFT JOIN delivered_at AS d ON d.delivery_id = e.delivery_id AND d.recipient_id = e.recipient_id
  LEFT JOIN delivery_sent_at AS s ON s.delivery_id = e.delivery_id
  WHERE e.event_type IN ('open', 'click')
),
bursts AS (
  -- Distinct links the same recipient clicked within the burst window around each click.
  SELECT event_id,
         count(DISTINCT link_id) OVER (
           PARTITION BY delivery_id, recipient_id
           ORDER BY epoch_us(event_time)
           RANGE BETWEEN $burst_window_us PRECEDING AND $burst_window_us FOLLOWING
         ) AS burst_links
  FROM hits
  WHERE event_type = 'click' AND recipient_id IS NOT NULL AND $burst_links > 0
),
evidence AS (
  SELECT h.*,
    -- Identity: each entry is "<kind>:<reason>", kind being proxy, prefetch or scanner.
    list_concat(
      CASE WHEN h.client_network IN (SELECT name FROM networks WHERE kind = 'proxy')
           THEN ['proxy:network:' || h.client_network] ELSE [] END,
      CASE WHEN h.client_network IN (SELECT name FROM networks WHERE kind = 'prefetch')
           THEN ['prefetch:network:' || h.client_network] ELSE [] END,
      CASE WHEN h.client_network IN (SELECT name FROM networks WHERE kind = 'scanner')
           THEN ['scanner:network:' || h.client_network] ELSE [] END,
      list_transform(h.ua_matches, lambda x: split_part(x, ':', 1) || ':user_agent:'
                                         || split_part(x, ':', 2)),
      CASE WHEN h.event_type = 'click' AND $head_clicks AND h.http_method = 'HEAD'
           THEN ['scanner:head_request'] ELSE [] END,
      CASE WHEN h.request_anomaly IS NOT NULL
           THEN ['scanner:request:' || h.request_anomaly] ELSE [] END,
      CASE WHEN h.event_type = 'click' AND h.link_type = $hidden_link_type
           THEN ['scanner:hidden_link'] ELSE [] END
    ) AS identity,
    -- Timing: a negative delay means the delivery time is unknown or later (clock skew).
    list_concat(
      CASE WHEN h.event_type = 'click' AND $click_window_us > 0
                AND h.since_delivery_us BETWEEN 0 AND $click_window_us - 1
           THEN ['scanner:click_soon_after_delivery'] ELSE [] END,
      CASE WHEN b.burst_links >= $burst_links AND $burst_links > 0
           THEN ['scanner:click_burst'] ELSE [] END,
      CASE WHEN h.event_type = 'open' AND $prefetch_window_us > 0
                AND h.since_delivery_us BETWEEN 0 AND $prefetch_window_us - 1
           THEN ['prefetch:open_soon_after_delivery'] ELSE [] END
    ) AS timing
  FROM hits AS h
  LEFT JOIN bursts AS b USING (event_id)
),
applicable AS (
  -- Proxy and prefetch evidence says nothing about clicks: Apple's egress ranges also carry
  -- iCloud Private Relay users clicking in Safari, and image proxies do not follow links.
  SELECT event_id, event_type, delivery_id, user_agent, timing,
         CASE WHEN event_type = 'click'
              THEN list_filter(identity, lambda x: x LIKE 'scanner:%')
              ELSE identity END AS identity
  FROM evidence
),
decided AS (
  SELECT event_id, event_type, delivery_id, identity, timing,
    list_filter(identity, lambda x: x NOT LIKE 'proxy:%') AS machine,
    list_filter(identity, lambda x: x LIKE 'proxy:%') AS proxy,
    user_agent IS NULL OR trim(user_agent) IN ('', '-') AS no_user_agent
  FROM applicable
)
SELECT event_id, delivery_id, event_type,
  CASE
    WHEN len(machine) > 0 OR (len(proxy) = 0 AND len(timing) > 0)
      THEN CASE WHEN event_type = 'click' THEN 'scanner_click' ELSE 'machine_prefetch' END
    WHEN len(proxy) > 0 THEN 'proxy_open'
    WHEN no_user_agent THEN 'unknown'
    ELSE 'human'
  END AS class,
  list_concat(
    list_transform(list_concat(identity, timing), lambda x: x[strpos(x, ':') + 1:]),
    CASE WHEN no_user_agent THEN ['no_user_agent'] ELSE [] END
  ) AS reasons
FROM decided
"""

# Per delivery and reason, the hits a rule flagged: the data-quality box's "events flagged per
# rule". Reasons are counted on every hit they matched, also when a stronger rule decided.
FLAGGED_SQL = """
SELECT delivery_id, reason, count(*) AS events
FROM (SELECT delivery_id, unnest(reasons) AS reason FROM event_classes)
GROUP BY ALL
ORDER BY delivery_id, events DESC, reason
"""

CLASS_COUNTS_SQL = """
SELECT delivery_id, event_type, class, count(*) AS events
FROM event_classes
GROUP BY ALL
ORDER BY delivery_id, event_type, class
"""


def classify_events(con: duckdb.DuckDBPyConnection, rules: ClassificationConfig,
                    catalogs: dict[str, DeliveryCatalog]) -> None:
    """Create the temp table event_classes (event_id, delivery_id, event_type, class, reasons).

    Needs the tables `events` and `link_types` (metrics.load_events, metrics.set_link_types).
    """
    _register_rules(con, rules, catalogs)
    con.execute(USER_AGENT_MATCHES_SQL)
    con.execute(DELIVERED_AT_SQL)
    con.execute(EVENT_CLASSES_SQL, {
        "head_clicks": rules.head_clicks,
        "hidden_link_type": HIDDEN_LINK_TYPE,
        "click_window_us": round(rules.click_window_s * MICROSECONDS),
        "burst_window_us": round(rules.burst_window_s * MICROSECONDS),
        "burst_links": rules.burst_links,
        "prefetch_window_us": round(rules.prefetch_window_s * MICROSECONDS),
    })


def flagged_per_rule(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, int]]]:
    """Return, per delivery id, (reason, hits) in descending order of hits."""
    flagged: dict[str, list[tuple[str, int]]] = {}
    for delivery_id, reason, events in con.execute(FLAGGED_SQL).fetchall():
        flagged.setdefault(delivery_id, []).append((reason, events))
    return flagged


def class_counts(con: duckdb.DuckDBPyConnection) -> dict[str, dict[tuple[str, str], int]]:
    """Return, per delivery id, {(event type, class): hits}."""
    counts: dict[str, dict[tuple[str, str], int]] = {}
    for delivery_id, event_type, class_, events in con.execute(CLASS_COUNTS_SQL).fetchall():
        counts.setdefault(delivery_id, {})[(event_type, class_)] = events
    return counts


def write_classified(con: duckdb.DuckDBPyConnection, store: Store, scratch: Path,
                     file_stems: dict[str, str]) -> int:
    """Write event_classes to `<store>/classified/event_date=YYYY-MM-DD/<stem>.parquet`.

    One file per (UTC event date, delivery), named from the date and the delivery's report file
    stem (never from a raw id), so a rerun replaces exactly the files it wrote before.
    Returns the number of files written.
    """
    relation = con.sql("""
        SELECT c.delivery_id, CAST(e.event_time AT TIME ZONE 'UTC' AS DATE) AS event_date,
               c.event_id, c.event_type, c.class, c.reasons
        FROM event_classes AS c JOIN events AS e USING (event_id)
        ORDER BY c.delivery_id, event_date, c.event_id
    """)
    # Newer DuckDB releases name the relation's arrow() method to_arrow_table().
    rows = (getattr(relation, "to_arrow_table", None) or relation.arrow)()

    written = 0
    for (delivery_id, event_date), part in _groups(rows):
        table = pa.table({
            "event_id": part["event_id"],
            "delivery_id": part["delivery_id"],
            "event_type": part["event_type"],
            "class": part["class"],
            "reasons": part["reasons"],
        }, schema=CLASSIFIED_SCHEMA)
        local = scratch / f"classified-{written}.parquet"
        pq.write_table(table, local)
        relative = f"{CLASSIFIED_DIR}/event_date={event_date.isoformat()}/{file_stems[delivery_id]}.parquet"
        upload_file(store.agent_store(), str(local), relative)
        local.unlink()
        written += 1
    log.info("wrote %d classification files to %s/", written, CLASSIFIED_DIR)
    return written


def _groups(rows: pa.Table):
    """Yield ((delivery id, event date), rows) for the runs of equal keys of a sorted table."""
    if rows.num_rows == 0:
        return
    # A run starts where either key differs from the row before: computed in Arrow, because a
    # night's classification has millions of rows.
    changed = np.zeros(rows.num_rows, dtype=bool)
    changed[0] = True
    for name in ("delivery_id", "event_date"):
        column = rows[name].combine_chunks()
        differs = pc.not_equal(column.slice(1), column.slice(0, rows.num_rows - 1))
        changed[1:] |= np.asarray(differs.fill_null(True))
    starts = np.flatnonzero(changed).tolist() + [rows.num_rows]
    for start, end in zip(starts, starts[1:], strict=False):
        key = (rows["delivery_id"][start].as_py(), rows["event_date"][start].as_py())
        yield key, rows.slice(start, end - start)


def _register_rules(con: duckdb.DuckDBPyConnection, rules: ClassificationConfig,
                    catalogs: dict[str, DeliveryCatalog]) -> None:
    networks = ([(name, "proxy") for name in rules.proxy_networks]
                + [(name, "prefetch") for name in rules.prefetch_networks]
                + [(name, "scanner") for name in rules.scanner_networks])
    con.register("networks", pa.table({
        "name": pa.array([n for n, _ in networks], pa.string()),
        "kind": pa.array([k for _, k in networks], pa.string()),
    }))
    con.register("ua_rules", pa.table({
        "position": pa.array(range(len(rules.user_agent_rules)), pa.int32()),
        "name": pa.array([rule.name for rule in rules.user_agent_rules], pa.string()),
        "pattern": pa.array([rule.pattern for rule in rules.user_agent_rules], pa.string()),
        "kind": pa.array([rule.kind for rule in rules.user_agent_rules], pa.string()),
    }))
    sent = [(c.delivery_id, c.sent_at.astimezone(UTC)) for c in catalogs.values() if c.sent_at]
    con.register("delivery_sent_at", pa.table({
        "delivery_id": pa.array([d for d, _ in sent], pa.string()),
        "sent_at": pa.array([t for _, t in sent], pa.timestamp("us", tz="UTC")),
    }))
