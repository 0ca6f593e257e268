"""Write a seeded event store for the reporter benchmark, directly as Parquet.

The store has the agent's layout, `<store>/events/event_date=YYYY-MM-DD/<name>.parquet` with
EVENT_SCHEMA, plus one catalog entry per delivery. Events are spread over DAYS UTC days ending
on REPORT_DATE, so `run_nightly(..., report_date=REPORT_DATE, lookback_days=DAYS,
timezone="UTC")` reports every delivery.

The mix per 1,000 events, before duplicates, is 350 sent, 40 deferred, 25 bounced, 5 expired,
5 rejected, 2 complaints, 400 opens, 163 clicks and 10 unsubscribes. Bounces are hard, soft or
ignored, with a reason and a diagnostic. Clicks go to 6 links, and link 6 is the catalog's
unsubscribe link. Unsubscribes use GET, HEAD or POST. About 1 % of the rows are stored a second
time in a `-replay` file of the same partition, as an agent re-upload would do.

    .venv/bin/python bench/reporter_store.py --events 10000000 /tmp/clicktrail-bench/store
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from clicktrail.agent.schema import CATALOG_DIR, EVENT_SCHEMA, EVENTS_DIR  # noqa: E402

REPORT_DATE = date(2026, 11, 30)
DAYS = 30
FIRST_DAY = REPORT_DATE - timedelta(days=DAYS - 1)
PERIOD_START = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=UTC)
PERIOD_END = datetime.combine(REPORT_DATE + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
MICROSECONDS_PER_SECOND = 1_000_000

DEFAULT_EVENTS = 10_000_000
DEFAULT_DELIVERIES = 50
RECIPIENTS_PER_EVENT = 0.2  # 2 * 10^6 recipients for 10^7 events
MAX_ROWS_PER_FILE = 1_000_000
DUPLICATE_SHARE = 0.01
LINKS_PER_DELIVERY = 6
UNSUBSCRIBE_LINK = "6"

EVENT_TYPES = np.array(["sent", "deferred", "bounced", "expired", "rejected", "complaint",
                        "open", "click", "unsubscribe"])
EVENT_TYPE_WEIGHTS = np.array([350, 40, 25, 5, 5, 2, 400, 163, 10], dtype=float)
MTA_TYPE_CODES = np.array([0, 1, 2, 3, 4])  # positions of the MTA types in EVENT_TYPES
TRACKING_TYPE_CODES = np.array([6, 7, 8])

DOMAINS = np.array(["gmail.com", "orange.fr", "outlook.com", "yahoo.com", "free.fr", "sfr.fr",
                    "hotmail.com", "icloud.com", "laposte.net", "wanadoo.fr", "gmx.de",
                    "web.de", "aol.com", "protonmail.com", "example.org", "bbox.fr",
                    "neuf.fr", "live.com", "me.com", "yandex.ru"])
BOUNCE_TYPES = np.array(["hard", "soft", "ignored"])
BOUNCE_TYPE_WEIGHTS = np.array([0.6, 0.35, 0.05])
BOUNCES = [
    # (reason, diagnostic_group, SMTP code)
    ("user_unknown", "550 5.1.1 <*@*>: user unknown", 550),
    ("mailbox_full", "452 4.2.2 <*@*>: mailbox full", 452),
    ("invalid_domain", "550 5.1.2 host * not found", 550),
    ("account_disabled", "550 5.2.1 account * disabled", 550),
    ("refused", "554 5.7.1 message refused by policy *", 554),
    ("unreachable", "421 4.4.1 connection to * timed out", 421),
    ("other", "550 5.0.0 unknown error *", 550),
]
DEFERRAL_DIAGNOSTIC = "421 4.7.0 try again later *"
USER_AGENTS = np.array([
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15",
])


def delivery_ids(deliveries: int) -> list[str]:
    return [f"d{number:03d}" for number in range(deliveries)]


def generate_store(store: Path, events: int, deliveries: int = DEFAULT_DELIVERIES,
                   seed: int = 1) -> dict[str, int]:
    """Write the events and catalog entries into `store`, which must be new or empty.

    Returns the counts written: events (distinct event ids), rows (including duplicates), files
    and recipients.
    """
    if events < 1 or deliveries < 1:
        raise ValueError(f"events and deliveries must be at least 1, got {events} and {deliveries}")
    if store.exists() and any(store.iterdir()):
        raise ValueError(f"{store} is not empty: pass a new folder")

    rng = np.random.default_rng(seed)
    recipients = max(10, int(events * RECIPIENTS_PER_EVENT))
    columns = _draw_events(rng, events, deliveries, recipients)
    order = np.argsort(columns["time_us"], kind="stable")
    columns = {name: values[order] for name, values in columns.items()}

    ids = delivery_ids(deliveries)
    _write_catalog(store, ids)
    rows, files = _write_partitions(store, rng, columns, ids)
    return {"events": events, "rows": rows, "files": files, "recipients": recipients}


def _draw_events(rng: np.random.Generator, events: int, deliveries: int,
                 recipients: int) -> dict[str, np.ndarray]:
    """Draw the integer codes of every event. The strings are built per file later."""
    # Deliveries differ in size. Each one is sent at some second of the first 27 days.
    delivery_weights = rng.uniform(0.3, 1.7, deliveries)
    delivery = rng.choice(deliveries, events, p=delivery_weights / delivery_weights.sum())
    sent_offset_s = rng.integers(0, (DAYS - 3) * 86_400, deliveries)

    event_type = rng.choice(len(EVENT_TYPES), events, p=EVENT_TYPE_WEIGHTS / EVENT_TYPE_WEIGHTS.sum())
    is_mta = np.isin(event_type, MTA_TYPE_CODES)
    # MTA events come minutes after the send, and tracking events over the following days.
    delay_s = np.where(is_mta, rng.exponential(600, events), rng.exponential(86_400, events))
    start_us = int(PERIOD_START.timestamp()) * MICROSECONDS_PER_SECOND
    end_us = int(PERIOD_END.timestamp()) * MICROSECONDS_PER_SECOND
    time_us = start_us + ((sent_offset_s[delivery] + delay_s) * MICROSECONDS_PER_SECOND).astype(np.int64)
    time_us = np.minimum(time_us, end_us - 1)

    # The domain belongs to the recipient, with the big mailbox providers most common.
    domain_weights = 1.0 / np.arange(1, len(DOMAINS) + 1)
    recipient_domain = rng.choice(len(DOMAINS), recipients, p=domain_weights / domain_weights.sum())
    recipient = rng.integers(0, recipients, events)

    link_weights = np.array([30, 25, 15, 12, 10, 8], dtype=float)
    return {
        "delivery": delivery.astype(np.int16),
        "event_type": event_type.astype(np.int8),
        "time_us": time_us,
        "recipient": recipient.astype(np.int32),
        "domain": recipient_domain[recipient].astype(np.int8),
        "link": rng.choice(LINKS_PER_DELIVERY, events, p=link_weights / link_weights.sum()).astype(np.int8),
        "bounce_type": rng.choice(len(BOUNCE_TYPES), events, p=BOUNCE_TYPE_WEIGHTS).astype(np.int8),
        "bounce": rng.integers(0, len(BOUNCES), events).astype(np.int8),
        "unsubscribe_method": rng.choice(3, events, p=[0.5, 0.1, 0.4]).astype(np.int8),
        "user_agent": rng.integers(0, len(USER_AGENTS), events).astype(np.int8),
        "event_number": np.arange(events, dtype=np.int64),
    }


def _write_catalog(store: Path, ids: list[str]) -> None:
    folder = store / CATALOG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for number, delivery_id in enumerate(ids):
        links = [{"link_id": str(link), "url": _link_url(delivery_id, str(link)),
                  "label": f"Link {link}", "type": "click"}
                 for link in range(1, LINKS_PER_DELIVERY + 1)]
        links[-1].update(label="Unsubscribe", type="unsubscribe")
        entry = {"delivery_id": delivery_id, "name": f"Newsletter {number + 1}",
                 "subject": f"News of the week {number + 1}", "owners": ["owner@example.org"],
                 "links": links}
        (folder / f"{delivery_id}.json").write_text(json.dumps(entry), encoding="utf-8")


def _link_url(delivery_id: str, link_id: str) -> str:
    if link_id == UNSUBSCRIBE_LINK:
        return f"https://news.example.org/unsubscribe?d={delivery_id}"
    return f"https://shop.example.org/{delivery_id}/offer-{link_id}"


def _write_partitions(store: Path, rng: np.random.Generator, columns: dict[str, np.ndarray],
                      ids: list[str]) -> tuple[int, int]:
    """Write the sorted events day by day in files of at most MAX_ROWS_PER_FILE rows."""
    start_us = int(PERIOD_START.timestamp()) * MICROSECONDS_PER_SECOND
    day_index = (columns["time_us"] - start_us) // (86_400 * MICROSECONDS_PER_SECOND)
    bounds = np.searchsorted(day_index, np.arange(DAYS + 1))
    rows = files = 0
    for day in range(DAYS):
        folder = store / EVENTS_DIR / f"event_date={(FIRST_DAY + timedelta(days=day)).isoformat()}"
        for first in range(int(bounds[day]), int(bounds[day + 1]), MAX_ROWS_PER_FILE):
            last = min(first + MAX_ROWS_PER_FILE, int(bounds[day + 1]))
            part = {name: values[first:last] for name, values in columns.items()}
            table = _build_table(part, ids)
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / f"bench-mixed-g1-{first:012d}.parquet", compression="zstd")
            rows += table.num_rows
            files += 1

            # A replay of some rows, as a re-upload after a crash stores them: same event ids,
            # a later ingest time.
            replayed = np.flatnonzero(rng.random(last - first) < DUPLICATE_SHARE)
            if len(replayed):
                replay = table.take(pa.array(replayed))
                ingest = pc.add(replay["ingest_time"], pa.scalar(timedelta(hours=1)))
                replay = replay.set_column(EVENT_SCHEMA.get_field_index("ingest_time"),
                                           EVENT_SCHEMA.field("ingest_time"), ingest)
                pq.write_table(replay, folder / f"bench-mixed-g1-{first:012d}-replay.parquet",
                               compression="zstd")
                rows += replay.num_rows
                files += 1
    return rows, files


def _build_table(part: dict[str, np.ndarray], ids: list[str]) -> pa.Table:
    count = len(part["time_us"])
    event_type = part["event_type"]
    is_mta = np.isin(event_type, MTA_TYPE_CODES)
    is_bounce = event_type == 2
    is_click = event_type == 7
    is_tracking = np.isin(event_type, TRACKING_TYPE_CODES)

    def pick(values: list[str] | np.ndarray, codes: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
        # Dictionary lookup in Arrow: a Python string per row would dominate the run time.
        indices = pa.array(codes.astype(np.int32), mask=None if mask is None else ~mask)
        return pc.take(pa.array(list(values), pa.string()), indices)

    def prefixed(prefix: str, numbers: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
        text = pa.array(numbers, mask=None if mask is None else ~mask).cast(pa.string())
        return pc.binary_join_element_wise(prefix, text, "")

    recipient = part["recipient"]
    delivery = part["delivery"]
    link_urls = [_link_url(d, str(link)) for d in ids for link in range(1, LINKS_PER_DELIVERY + 1)]
    times = pa.array(part["time_us"], pa.timestamp("us", tz="UTC"))
    unsubscribe_methods = np.array(["GET", "HEAD", "POST"])
    method_codes = np.where(event_type == 8, part["unsubscribe_method"], 0)
    bounce_codes = part["bounce"]
    diagnostics = [group for _reason, group, _code in BOUNCES]

    arrays = {
        "event_id": prefixed("e", part["event_number"]),
        "event_time": times,
        "event_type": pick(EVENT_TYPES, event_type),
        "delivery_id": pick(ids, delivery),
        "recipient_id": prefixed("r", recipient),
        "link_id": pick([str(n) for n in range(1, LINKS_PER_DELIVERY + 1)], part["link"], is_click),
        "url": pick(link_urls, delivery.astype(np.int32) * LINKS_PER_DELIVERY + part["link"], is_click),
        "http_method": pick(unsubscribe_methods, method_codes, is_tracking),
        "http_status": pa.array(np.where(is_click, 302, 200).astype(np.int16), mask=~is_tracking),
        "user_agent": pick(USER_AGENTS, part["user_agent"], is_tracking),
        "recipient_domain": pick(DOMAINS, part["domain"], is_mta),
        "recipient_key": prefixed("k", recipient, is_mta),
        "bounce_type": pick(BOUNCE_TYPES, part["bounce_type"], is_bounce),
        "bounce_reason": pick([reason for reason, _group, _code in BOUNCES], bounce_codes, is_bounce),
        "smtp_code": pa.array(np.array([code for _r, _g, code in BOUNCES], np.int16)[bounce_codes],
                              mask=~is_bounce),
        "diagnostic_group": pc.if_else(pa.array(is_bounce), pick(diagnostics, bounce_codes),
                                       pa.array(np.where(event_type == 1, DEFERRAL_DIAGNOSTIC, None))),
        "source_kind": pick(["mta", "access_log"], is_tracking.astype(np.int8)),
        "source_name": pick(["postfix", "tracking"], is_tracking.astype(np.int8)),
        "source_host": pa.array(["mx1"] * count, pa.string()),
        "source_path": pick(["/var/log/mail.log", "/var/log/nginx/access.log"],
                            is_tracking.astype(np.int8)),
        "source_generation": pa.array(["g1"] * count, pa.string()),
        "source_offset": pa.array(part["event_number"] * 200),
        "ingest_time": pc.add(times, pa.scalar(timedelta(minutes=1))),
    }
    # Recipients are batched 100 per message, as many MTAs queue a newsletter.
    arrays["queue_id"] = pc.binary_join_element_wise(
        pick([f"q{d}-" for d in ids], delivery, is_mta),
        pa.array(recipient // 100).cast(pa.string()), "")
    table_columns = [arrays.get(f.name, pa.nulls(count, f.type)).cast(f.type) for f in EVENT_SCHEMA]
    return pa.Table.from_arrays(table_columns, schema=EVENT_SCHEMA)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path, help="new or empty folder to write the store into")
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS,
                        help="distinct events to write (default 10^7)")
    parser.add_argument("--deliveries", type=int, default=DEFAULT_DELIVERIES,
                        help="deliveries the events belong to (default 50)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    counts = generate_store(args.store, args.events, args.deliveries, args.seed)
    counts["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
