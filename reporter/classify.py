"""Classification of opens and clicks: human, proxy_open, machine_prefetch, scanner_click, unknown.

NOTE: placeholder until the rules land: every open and click is classed human.
"""

from __future__ import annotations

import duckdb

EVENT_CLASSES_SQL = """
CREATE OR REPLACE TEMP TABLE event_classes AS
SELECT event_id, 'human' AS class, []::VARCHAR[] AS reasons
FROM events
WHERE event_type IN ('open', 'click')
"""


def classify_events(con: duckdb.DuckDBPyConnection) -> None:
    """Create the temp table event_classes (event_id, class, reasons) over the table events."""
    con.execute(EVENT_CLASSES_SQL)
