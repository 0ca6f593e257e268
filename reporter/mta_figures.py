"""The MTA breakdowns of a delivery: bounces by reason, by recipient domain, top diagnostics.

They read the temp table `events` (and `figure_events` for the engagement columns of the
by-domain table) that metrics.load_events and metrics.create_figure_view create.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb

from .rates import Rate

if TYPE_CHECKING:
    from .metrics import DeliveryMetrics

MTA_EVENT_TYPES = ("sent", "deferred", "bounced", "expired", "rejected")
# Rows of the by-domain table that name one domain. The other domains share one "others" row.
MAX_DOMAIN_ROWS = 10
MAX_DIAGNOSTIC_ROWS = 10

BOUNCE_REASONS_SQL = """
SELECT delivery_id,
       CASE WHEN event_type = 'expired' THEN 'soft' ELSE coalesce(bounce_type, 'unknown') END
         AS bounce_type,
       coalesce(bounce_reason, CASE WHEN event_type = 'expired' THEN 'expired' ELSE 'other' END)
         AS bounce_reason,
       count(DISTINCT message_recipient) AS recipients
FROM events
WHERE event_type IN ('bounced', 'expired')
GROUP BY ALL
ORDER BY delivery_id, bounce_type, recipients DESC, bounce_reason
"""

# One row per recipient domain of the delivery. The MAX_DOMAIN_ROWS domains with the most
# processed message recipients get their own rows, with ties in name order. One "others" row
# sums the rest, and one "unknown" row takes MTA events without a domain and the recipients
# without MTA events.
# A message recipient is one address, so it has one domain. Tracking events carry no domain, so
# a recipient id takes the domains of all its MTA events. It counts at most once per row and
# figure: a seed list's id counts once under each of its domains, and once in "others".
DOMAIN_FIGURES_SQL = f"""
WITH mta AS (
  SELECT delivery_id, recipient_id, recipient_domain AS domain, message_recipient,
         event_type, bounce_type
  FROM events
  WHERE event_type IN {MTA_EVENT_TYPES!r}
),
ranks AS (
  SELECT delivery_id, domain,
         row_number() OVER (
             PARTITION BY delivery_id
             ORDER BY count(DISTINCT message_recipient) DESC, domain) AS domain_rank
  FROM mta
  WHERE domain IS NOT NULL
  GROUP BY delivery_id, domain
),
labelled AS (
  SELECT mta.*,
         CASE WHEN ranks.domain_rank IS NULL THEN 'unknown'
              WHEN ranks.domain_rank <= $max_domain_rows THEN 'domain'
              ELSE 'others'
         END AS row_kind,
         CASE WHEN ranks.domain_rank <= $max_domain_rows THEN mta.domain END AS row_domain
  FROM mta
  LEFT JOIN ranks USING (delivery_id, domain)
),
mta_figures AS (
  SELECT delivery_id, row_kind, row_domain,
    count(DISTINCT domain) AS domains,
    count(DISTINCT message_recipient) AS processed,
    count(DISTINCT message_recipient) FILTER (event_type = 'sent') AS delivered,
    count(DISTINCT message_recipient) FILTER (event_type = 'bounced' AND bounce_type = 'hard')
      AS hard_bounces,
    count(DISTINCT message_recipient) FILTER (
      (event_type = 'bounced' AND bounce_type = 'soft') OR event_type = 'expired')
      AS soft_bounces
  FROM labelled
  GROUP BY ALL
),
recipient_rows AS (
  SELECT DISTINCT delivery_id, recipient_id, row_kind, row_domain
  FROM labelled
  WHERE recipient_id IS NOT NULL
),
-- The same recipients as the delivery's "opens including clicks" and "unique clickers".
engaged AS (
  SELECT delivery_id, recipient_id, bool_or(figure = 'click') AS clicked
  FROM figure_events
  WHERE event_type IN ('open', 'click') AND recipient_id IS NOT NULL
  GROUP BY ALL
),
engagement_figures AS (
  SELECT engaged.delivery_id,
         coalesce(recipient_rows.row_kind, 'unknown') AS row_kind,
         recipient_rows.row_domain,
         count(*) AS opens_including_clicks,
         count(*) FILTER (engaged.clicked) AS unique_clickers
  FROM engaged
  LEFT JOIN recipient_rows USING (delivery_id, recipient_id)
  GROUP BY ALL
)
SELECT coalesce(m.delivery_id, g.delivery_id) AS delivery_id,
       coalesce(m.row_kind, g.row_kind) AS kind,
       coalesce(m.row_domain, g.row_domain) AS domain,
       coalesce(m.domains, 0) AS domains,
       coalesce(m.processed, 0) AS processed,
       coalesce(m.delivered, 0) AS delivered,
       coalesce(m.hard_bounces, 0) AS hard_bounces,
       coalesce(m.soft_bounces, 0) AS soft_bounces,
       coalesce(g.opens_including_clicks, 0) AS opens_including_clicks,
       coalesce(g.unique_clickers, 0) AS unique_clickers
FROM mta_figures AS m
FULL JOIN engagement_figures AS g
  ON g.delivery_id = m.delivery_id
 AND g.row_kind = m.row_kind
 AND g.row_domain IS NOT DISTINCT FROM m.row_domain
ORDER BY delivery_id, kind = 'unknown', kind = 'others', processed DESC, domain
"""

# The MAX_DIAGNOSTIC_ROWS most frequent diagnostics of failed and deferred attempts. The masked
# form (diagnostic_group) groups one cause as one row. Events stored before that column existed
# have it null, and fall back to the raw diagnostic, which groups only identical texts.
# Types and reasons are labelled as in BOUNCE_REASONS_SQL.
DIAGNOSTICS_SQL = """
WITH diagnostics AS (
  SELECT delivery_id, event_type,
         CASE WHEN event_type = 'expired' THEN 'soft' ELSE coalesce(bounce_type, 'unknown') END
           AS bounce_type,
         coalesce(bounce_reason,
                  CASE WHEN event_type = 'expired' THEN 'expired' ELSE 'other' END)
           AS bounce_reason,
         coalesce(diagnostic_group, diagnostic) AS diagnostic,
         count(DISTINCT message_recipient) AS recipients
  FROM events
  WHERE event_type IN ('bounced', 'expired', 'deferred')
  GROUP BY ALL
)
SELECT *
FROM diagnostics
QUALIFY row_number() OVER (
    PARTITION BY delivery_id
    ORDER BY recipients DESC, event_type, bounce_type, bounce_reason, diagnostic NULLS LAST)
  <= $max_diagnostic_rows
ORDER BY delivery_id, recipients DESC, event_type, bounce_type, bounce_reason,
         diagnostic NULLS LAST
"""


@dataclass(frozen=True)
class BounceRow:
    bounce_type: str
    bounce_reason: str
    recipients: int


@dataclass(frozen=True)
class DomainRow:
    """One row of the by-domain table, with the figures that docs/glossary.md defines."""

    # "domain" for one domain, "others" for the domains past MAX_DOMAIN_ROWS, "unknown" for
    # MTA events without a domain and recipients without MTA events.
    kind: str
    domain: str | None
    # Distinct domains counted in the row: 1 for a domain, 0 for "unknown".
    domains: int
    processed: int
    delivered: int
    hard_bounces: int
    soft_bounces: int
    opens_including_clicks: int
    unique_clickers: int

    @property
    def bounces(self) -> int:
        return self.hard_bounces + self.soft_bounces

    @property
    def bounce_rate(self) -> Rate:
        return Rate(self.bounces, self.processed)


@dataclass(frozen=True)
class DiagnosticRow:
    event_type: str
    bounce_type: str
    bounce_reason: str
    # diagnostic_group, else the raw diagnostic. None when the event has neither.
    diagnostic: str | None
    recipients: int


def add_mta_breakdowns(con: duckdb.DuckDBPyConnection, result: dict[str, DeliveryMetrics]) -> None:
    """Fill the bounces, domains and diagnostics lists of every delivery in result."""
    for delivery_id, bounce_type, reason, recipients in con.execute(BOUNCE_REASONS_SQL).fetchall():
        result[delivery_id].bounces.append(BounceRow(bounce_type, reason, recipients))

    domain_rows = con.execute(DOMAIN_FIGURES_SQL, {"max_domain_rows": MAX_DOMAIN_ROWS})
    for delivery_id, *domain_row in domain_rows.fetchall():
        result[delivery_id].domains.append(DomainRow(*domain_row))

    diagnostic_rows = con.execute(DIAGNOSTICS_SQL, {"max_diagnostic_rows": MAX_DIAGNOSTIC_ROWS})
    for delivery_id, *diagnostic_row in diagnostic_rows.fetchall():
        result[delivery_id].diagnostics.append(DiagnosticRow(*diagnostic_row))
