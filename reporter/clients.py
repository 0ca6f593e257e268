"""The "Mail clients and devices" section: opens and clicks by mail client, browser, OS and device.

Each distinct user agent of the active deliveries' opens and clicks is described once in Python
(useragents.describe_user_agent). The descriptions go back to DuckDB as a small Arrow table,
and the join and the counting run there, so the per-event work stays in SQL however many
recipients a delivery has.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pygal

from .charts import CHART_STYLE, Chart, _count_labels
from .sections import HUMAN_CLASSES, Section, SectionInput
from .useragents import describe_user_agent

log = logging.getLogger(__name__)

# Rows of each table that name one value. The other values share one "others" row.
MAX_CLIENT_ROWS = 8

# (column of the descriptions table, heading of the report table)
DIMENSIONS = (
    ("mail_client", "Mail client"),
    ("browser", "Browser"),
    ("os", "Operating system"),
    ("device", "Device type"),
)

# Opens and clicks as the headline figures count them: clicks on unsubscribe and mirror links
# are page views, not clicks.
DISTINCT_USER_AGENTS_SQL = """
SELECT DISTINCT coalesce(user_agent, '') AS user_agent
FROM figure_events
WHERE figure IN ('open', 'click')
"""

# One row per delivery, dimension and value with the hits and recipients of opens and of
# clicks, raw and human-only. The MAX_CLIENT_ROWS values with the most opens and clicks get
# their own rows (ties in name order), and the others share one row whose value is NULL.
# A recipient counts once per row and figure, so a recipient seen in two mail clients counts in
# both rows.
CLIENT_FIGURES_SQL = """
WITH hits AS (
  SELECT f.delivery_id, f.figure, f.recipient_id,
         f.human AS is_human, f.human_hit AS is_human_hit,
         d.mail_client, d.browser, d.os, d.device
  FROM figure_events AS f
  JOIN user_agent_descriptions AS d ON d.user_agent = coalesce(f.user_agent, '')
  WHERE f.figure IN ('open', 'click')
),
long AS (
  UNPIVOT hits ON mail_client, browser, os, device INTO NAME dimension VALUE value_name
),
ranks AS (
  SELECT delivery_id, dimension, value_name,
         row_number() OVER (
             PARTITION BY delivery_id, dimension ORDER BY count(*) DESC, value_name)
           AS value_rank
  FROM long
  GROUP BY delivery_id, dimension, value_name
)
SELECT long.delivery_id, long.dimension,
  CASE WHEN ranks.value_rank <= $max_rows THEN long.value_name END AS value_name,
  min(ranks.value_rank) AS first_rank,
  count(DISTINCT long.value_name) AS value_count,
  count(*) FILTER (figure = 'open') AS opens,
  count(DISTINCT recipient_id) FILTER (figure = 'open') AS openers,
  count(*) FILTER (figure = 'open' AND is_human_hit) AS human_opens,
  count(DISTINCT recipient_id) FILTER (figure = 'open' AND is_human) AS human_openers,
  count(*) FILTER (figure = 'click') AS clicks,
  count(DISTINCT recipient_id) FILTER (figure = 'click') AS clickers,
  count(*) FILTER (figure = 'click' AND is_human_hit) AS human_clicks,
  count(DISTINCT recipient_id) FILTER (figure = 'click' AND is_human) AS human_clickers
FROM long
JOIN ranks USING (delivery_id, dimension, value_name)
GROUP BY long.delivery_id, long.dimension, 3
ORDER BY long.delivery_id, long.dimension, first_rank
"""


@dataclass(frozen=True)
class ClientRow:
    # None for the row of all values after the first MAX_CLIENT_ROWS.
    name: str | None
    # Distinct values in the row: 1, or the number of values that "others" sums.
    value_count: int
    opens: int
    openers: int
    human_opens: int
    human_openers: int
    clicks: int
    clickers: int
    human_clicks: int
    human_clickers: int


@dataclass(frozen=True)
class ClientTable:
    dimension: str
    heading: str
    rows: list[ClientRow]


@dataclass(frozen=True)
class ClientBreakdown:
    tables: list[ClientTable]
    chart: Chart | None
    human_classes: tuple[str, ...] = HUMAN_CLASSES


def clients_section() -> Section:
    return Section(name="clients", title="Mail clients and devices", compute=compute_clients)


def compute_clients(section_input: SectionInput) -> dict[str, ClientBreakdown]:
    """Compute the breakdown of every active delivery with an open or a click."""
    con = section_input.con
    described = describe_distinct_user_agents(con)

    by_delivery: dict[str, dict[str, list[ClientRow]]] = {}
    cursor = con.execute(CLIENT_FIGURES_SQL, {"max_rows": MAX_CLIENT_ROWS})
    for delivery_id, dimension, name, _rank, value_count, *figures in cursor.fetchall():
        tables = by_delivery.setdefault(delivery_id, {column: [] for column, _ in DIMENSIONS})
        tables[dimension].append(ClientRow(name, value_count, *figures))
    log.info("described %d distinct user agents of the opens and clicks of %d deliveries",
             described, len(by_delivery))

    breakdowns = {}
    for delivery_id, tables in by_delivery.items():
        client_tables = [ClientTable(column, heading, tables[column])
                         for column, heading in DIMENSIONS]
        breakdowns[delivery_id] = ClientBreakdown(client_tables,
                                                  mail_client_chart(tables["mail_client"]))
    return breakdowns


def describe_distinct_user_agents(con: duckdb.DuckDBPyConnection) -> int:
    """Create the table user_agent_descriptions: one row per distinct user agent of the opens
    and clicks, with the four descriptions. NULL user agents are keyed as ''.

    Returns the number of distinct user agents.
    """
    user_agents = [row[0] for row in con.execute(DISTINCT_USER_AGENTS_SQL).fetchall()]
    descriptions = [describe_user_agent(user_agent) for user_agent in user_agents]
    table = pa.table({
        "user_agent": pa.array(user_agents, pa.string()),
        "mail_client": pa.array([d.mail_client for d in descriptions], pa.string()),
        "browser": pa.array([d.browser for d in descriptions], pa.string()),
        "os": pa.array([d.os for d in descriptions], pa.string()),
        "device": pa.array([d.device for d in descriptions], pa.string()),
    })
    con.register("user_agent_descriptions_arrow", table)
    # A temp table, so that the join reads DuckDB's copy and not the Python object.
    con.execute("CREATE OR REPLACE TEMP TABLE user_agent_descriptions AS "
                "SELECT * FROM user_agent_descriptions_arrow")
    con.unregister("user_agent_descriptions_arrow")
    return len(user_agents)


def mail_client_chart(rows: list[ClientRow]) -> Chart | None:
    """Draw opens by mail client, raw and human-only, as horizontal bars."""
    rows = [row for row in rows if row.opens]
    if not rows:
        return None

    labels = [row.name if row.name is not None else f"others ({row.value_count})"
              for row in rows]
    title = "Opens by mail client"
    chart = pygal.HorizontalBar(
        js=[],
        style=CHART_STYLE,
        # Narrower than the time charts, so that the labels stay readable on an A4 page.
        width=700,
        height=100 + 30 * len(rows),
        title=title,
        legend_at_bottom=True,
        disable_xml_declaration=False,
    )
    # pygal draws the first label at the bottom; reversed, the table's order reads top down.
    chart.x_labels = list(reversed(labels))
    chart.y_labels = _count_labels(max(row.opens for row in rows))
    chart.add("Opens", [row.opens for row in reversed(rows)])
    chart.add("Human opens", [row.human_opens for row in reversed(rows)])
    svg = chart.render(is_unicode=True).encode("utf-8")
    data_uri = "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")

    description = "; ".join(f"{label}: {row.opens} opens, {row.human_opens} human"
                            for label, row in zip(labels, rows, strict=True))
    return Chart(title, data_uri, description)
