"""Report sections that each compute their own figures: the registry the nightly run walks.

A section is one page region of the delivery report (hot clicks, opens and clicks over time,
mail clients...). Its compute function runs while the nightly run's DuckDB connection is open
and returns, per delivery id, the context its template `sections/<name>.html.j2` receives as
`data`. The nightly run renders the sections in registry order, each under its own heading and
table-of-contents entry.

Tables a compute function can query (all deduplicated, limited to the active deliveries):

- `events`: the columns of metrics.LOAD_EVENTS_SQL;
- `figure_events`: events with the figure each counts towards (metrics.FIGURE_EVENTS_SQL);
- `link_types`: (delivery_id, link_id, type) from the catalog;
- `event_classes`: (event_id, class, reasons VARCHAR[]) for every open and click. Classes:
  human, proxy_open, machine_prefetch, scanner_click, unknown; `HUMAN_CLASSES_SQL` is the SQL
  list of the classes that human-only figures keep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb

from .catalog import DeliveryCatalog
from .period import ReportPeriod
from .store import Store

# Classes that human-only figures keep. proxy_open is a real open that an image proxy fetched on
# the recipient's behalf; unknown is a hit that no rule ties to a machine.
HUMAN_CLASSES = ("human", "proxy_open", "unknown")
HUMAN_CLASSES_SQL = "(" + ", ".join(f"'{name}'" for name in HUMAN_CLASSES) + ")"


@dataclass(frozen=True)
class SectionInput:
    con: duckdb.DuckDBPyConnection
    catalogs: dict[str, DeliveryCatalog]
    period: ReportPeriod
    store: Store


@dataclass(frozen=True)
class Section:
    # Names the template sections/<name>.html.j2 and the HTML anchor.
    name: str
    title: str
    compute: Callable[[SectionInput], dict[str, Any]]


def registered_sections() -> list[Section]:
    """Return the sections in the order the report shows them."""
    # Imported here because the section modules import this module's names.
    from .clients import clients_section
    from .hotclicks import compute_hot_clicks
    from .timeline import timeline_section

    return [
        Section(name="hot_clicks", title="Hot clicks", compute=compute_hot_clicks),
        timeline_section(),
        clients_section(),
    ]
