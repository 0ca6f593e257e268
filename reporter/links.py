"""Clicks per tracked link, and per label, URL and category of links: the "URLs" part of a report.

Reads the view `figure_events` and the table `link_types` (metrics.prepare_events). Figures are
given for all hits and for human hits (classify.py), as the rest of the report.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb

from .catalog import LINK_TYPES_NOT_CLICKS, DeliveryCatalog
from .rates import Rate

if TYPE_CHECKING:
    from .metrics import DeliveryMetrics

# Rows of the per-link table. A delivery with more links (some have thousands) shows the links
# with the most clicks and one row that sums the others, so the PDF stays a readable length.
MAX_LINK_ROWS = 100
# Rows of each by-label, by-URL and by-category table.
MAX_GROUP_ROWS = 20

# mode() picks the URL seen most often for a link; ties go to the smallest value so that a
# rerun shows the same one.
LINK_CLICKS_SQL = """
SELECT delivery_id, link_id,
       count(*) AS clicks,
       count(DISTINCT recipient_id) AS unique_clickers,
       count(*) FILTER (human) AS human_clicks,
       count(DISTINCT recipient_id) FILTER (human) AS human_unique_clickers,
       min(url) FILTER (url IS NOT NULL) AS any_url,
       mode(url) AS common_url
FROM figure_events
WHERE event_type = 'click'
GROUP BY ALL
"""

# Clicks (as the Clicks figure counts them) summed over the links that share a label, a URL or a
# category. A recipient who clicked two links of one group counts once in its unique clickers.
LINK_GROUPS_SQL = """
WITH clicks AS (
  SELECT f.delivery_id, f.recipient_id, f.human, l.label, l.category,
         coalesce(l.url, f.url) AS url
  FROM figure_events AS f
  LEFT JOIN link_types AS l ON l.delivery_id = f.delivery_id AND l.link_id = f.link_id
  WHERE f.figure = 'click'
),
keyed AS (
  SELECT delivery_id, recipient_id, human, 'label' AS kind, label AS value FROM clicks
  UNION ALL
  SELECT delivery_id, recipient_id, human, 'url', url FROM clicks
  UNION ALL
  SELECT delivery_id, recipient_id, human, 'category', category FROM clicks
)
SELECT delivery_id, kind, value,
       count(*) AS clicks,
       count(DISTINCT recipient_id) AS unique_clickers,
       count(*) FILTER (human) AS human_clicks,
       count(DISTINCT recipient_id) FILTER (human) AS human_unique_clickers
FROM keyed
WHERE value IS NOT NULL
GROUP BY delivery_id, kind, value
QUALIFY row_number() OVER (PARTITION BY delivery_id, kind ORDER BY clicks DESC, value)
  <= $max_group_rows
ORDER BY delivery_id, kind, clicks DESC, value
"""


@dataclass(frozen=True)
class LinkRow:
    link_id: str | None
    url: str | None
    label: str | None
    link_type: str | None
    clicks: int
    unique_clickers: int
    # Share of the delivery's clicks; None for links whose hits are not clicks (unsubscribe,
    # mirror), which the share leaves out.
    share: Rate | None
    human_clicks: int = 0
    human_unique_clickers: int = 0
    human_share: Rate | None = None
    # For the row that sums the links past MAX_LINK_ROWS: how many links it sums (else 0).
    other_links: int = 0


@dataclass(frozen=True)
class LinkGroupRow:
    # "label", "url" or "category"
    kind: str
    value: str
    clicks: int
    unique_clickers: int
    human_clicks: int
    human_unique_clickers: int
    share: Rate
    human_share: Rate


def add_links(con: duckdb.DuckDBPyConnection, result: dict[str, DeliveryMetrics],
              catalogs: dict[str, DeliveryCatalog]) -> None:
    """Fill the links and link_groups lists of every delivery in result."""
    # Click counts per (delivery, link). The catalog adds its links without clicks, the URL and
    # the label.
    counts: dict[str, dict[str | None, tuple]] = defaultdict(dict)
    for delivery_id, link_id, *figures, any_url, common_url in con.execute(
            LINK_CLICKS_SQL).fetchall():
        counts[delivery_id][link_id] = (*figures, common_url or any_url)

    for delivery_id, metrics in result.items():
        catalog = catalogs.get(delivery_id)
        catalog_links = catalog.links if catalog else {}
        link_ids = list(catalog_links) + [k for k in counts[delivery_id] if k not in catalog_links]
        rows = [_link_row(link_id, catalog_links.get(link_id or ""),
                          counts[delivery_id].get(link_id, (0, 0, 0, 0, None)), metrics)
                for link_id in link_ids]
        rows.sort(key=lambda link: (-link.clicks, link.link_id or ""))
        metrics.links = _cap(rows, metrics)

    groups = con.execute(LINK_GROUPS_SQL, {"max_group_rows": MAX_GROUP_ROWS}).fetchall()
    for delivery_id, kind, value, clicks, unique, human_clicks, human_unique in groups:
        metrics = result[delivery_id]
        metrics.link_groups.append(LinkGroupRow(
            kind, value, clicks, unique, human_clicks, human_unique,
            share=Rate(clicks, metrics.clicks), human_share=Rate(human_clicks, metrics.human_clicks)))


def _link_row(link_id: str | None, entry, figures: tuple, metrics: DeliveryMetrics) -> LinkRow:
    clicks, unique, human_clicks, human_unique, seen_url = figures
    link_type = entry.type if entry else None
    counted = link_type not in LINK_TYPES_NOT_CLICKS
    return LinkRow(
        link_id=link_id,
        url=(entry.url if entry and entry.url else seen_url),
        label=entry.label if entry else None,
        link_type=link_type,
        clicks=clicks,
        unique_clickers=unique,
        share=Rate(clicks, metrics.clicks) if counted else None,
        human_clicks=human_clicks,
        human_unique_clickers=human_unique,
        human_share=Rate(human_clicks, metrics.human_clicks) if counted else None,
    )


def _cap(rows: list[LinkRow], metrics: DeliveryMetrics) -> list[LinkRow]:
    """Keep the first MAX_LINK_ROWS rows and sum the clicks of the rest into one row."""
    if len(rows) <= MAX_LINK_ROWS:
        return rows

    shown, rest = rows[:MAX_LINK_ROWS], rows[MAX_LINK_ROWS:]
    counted = [row for row in rest if row.share is not None]
    clicks = sum(row.clicks for row in counted)
    human_clicks = sum(row.human_clicks for row in counted)
    # Unique clickers do not add up across links, so the summary row leaves them out (0).
    shown.append(LinkRow(
        link_id=None, url=None, label=None, link_type=None,
        clicks=clicks, unique_clickers=0,
        share=Rate(clicks, metrics.clicks),
        human_clicks=human_clicks, human_unique_clickers=0,
        human_share=Rate(human_clicks, metrics.human_clicks),
        other_links=len(rest),
    ))
    return shown
