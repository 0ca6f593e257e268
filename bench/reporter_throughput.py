"""Time the reporter's nightly run against DuckDB alone on the same Parquet store.

Three child processes run one after the other, so each gets its own peak RSS (from os.wait4):

- duckdb: DuckDB reads the Parquet files with its own reader (read_parquet, Hive partitions).
  It runs the reporter's SQL constants from clicktrail.reporter.metrics in the reporter's
  order: active deliveries, the deduplicating load, raw row counts, figure_events,
  DELIVERY_FIGURES_SQL, the other per-delivery queries and the unattributed events.
- duckdb-pyarrow: the same SQL over the pyarrow dataset that the reporter registers, which
  shows how much of the gap comes from that scan path.
- nightly: run_nightly on the store, with timers around its query part (nightly._compute) and
  its rendering part (nightly._stage_outputs, with write_pdf timed on its own). The PDF pages
  are counted with pypdf.

The store must come from bench/reporter_store.py, whose period (REPORT_DATE, DAYS, UTC) the
run uses.

    .venv/bin/python bench/reporter_throughput.py /tmp/clicktrail-bench/store \
        --json /tmp/clicktrail-bench/reporter.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET_QUERY_RATIO = 1.5
TARGET_SECONDS_PER_PAGE = 1.0
CHILD_TIMEOUT_S = 3600
CHILD_MODES = ("duckdb", "duckdb-pyarrow", "nightly")


def run_duckdb_alone(store: Path, scratch: Path, reader: str = "duckdb") -> dict:
    """Run the reporter's queries without the reporter, and return timings and figures.

    Reader "duckdb" scans the files with DuckDB's read_parquet. Reader "pyarrow" scans the
    pyarrow dataset that the reporter registers, which separates the cost of that scan path from
    the cost of the rest of the reporter.
    """
    import duckdb
    import pyarrow as pa
    from clicktrail.agent.config import ClassificationConfig
    from clicktrail.reporter import classify, links, nightly
    from clicktrail.reporter import metrics as m
    from clicktrail.reporter import mta_figures as mta
    from clicktrail.reporter.catalog import load_catalog
    from clicktrail.reporter.classify import classify_events
    from clicktrail.reporter.period import make_period
    from clicktrail.reporter.recipients import compute_summaries
    from clicktrail.reporter.sections import SectionInput, registered_sections
    from clicktrail.reporter.store import events_dataset, open_store

    sys.path.insert(0, str(REPO / "bench"))
    import reporter_store

    period = make_period(reporter_store.REPORT_DATE, "UTC", reporter_store.DAYS)
    parameters = m._period_parameters(period)
    load_parameters = {k: v for k, v in parameters.items() if k not in ("start", "first_utc_date")}
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def timed(name: str, sql: str, values: dict | None = None) -> list[tuple]:
        begin = time.perf_counter()
        rows = con.execute(sql, values or {}).fetchall()
        timings[name] = time.perf_counter() - begin
        return rows

    # Same connection settings as the reporter: only the spill folder is set.
    # The reporter's memory limit too ([report] max_memory_bytes, default 4 GiB), so that both
    # spill to disk alike.
    memory_limit = f"{nightly.DEFAULT_MAX_MEMORY_BYTES // (1024 * 1024)}MB"
    con = duckdb.connect(config={"temp_directory": str(scratch), "memory_limit": memory_limit})
    if reader == "duckdb":
        files = str(store / "events" / "*" / "*.parquet")
        con.execute(f"CREATE VIEW events_raw AS SELECT * FROM read_parquet('{files}', "
                    "hive_partitioning = true, hive_types = {'event_date': DATE})")
    else:
        con.register("events_raw", events_dataset(open_store(str(store))))

    active = [row[0] for row in timed("active deliveries", m.ACTIVE_DELIVERIES_SQL, parameters)]
    con.register("active_deliveries", pa.table({"delivery_id": pa.array(active, pa.string())}))
    timed("load with dedupe", m.LOAD_EVENTS_SQL, load_parameters)
    timed("raw rows", m.RAW_ROWS_SQL, load_parameters)

    # The link types come from the catalog entries, and the classification runs its SQL with
    # the default rules, as in the reporter.
    catalog_store = open_store(str(store))
    catalogs = {delivery_id: load_catalog(catalog_store, delivery_id) for delivery_id in active}
    m.set_link_types(con, catalogs)
    begin = time.perf_counter()
    classify_events(con, ClassificationConfig(), catalogs)
    timings["classification"] = time.perf_counter() - begin
    con.execute(m.FIGURE_EVENTS_SQL)

    begin = time.perf_counter()
    cursor = con.execute(m.DELIVERY_FIGURES_SQL)
    columns = [d[0] for d in cursor.description]
    figures = {row[0]: dict(zip(columns, row, strict=True)) for row in cursor.fetchall()}
    timings["delivery figures"] = time.perf_counter() - begin
    timed("pending", m.PENDING_SQL)
    timed("bounce reasons", mta.BOUNCE_REASONS_SQL)
    timed("domains", mta.DOMAIN_FIGURES_SQL, {"max_domain_rows": mta.MAX_DOMAIN_ROWS})
    timed("diagnostics", mta.DIAGNOSTICS_SQL, {"max_diagnostic_rows": mta.MAX_DIAGNOSTIC_ROWS})
    timed("link clicks", links.LINK_CLICKS_SQL)
    timed("link groups", links.LINK_GROUPS_SQL, {"max_group_rows": links.MAX_GROUP_ROWS})
    timed("class counts", classify.CLASS_COUNTS_SQL)
    timed("flagged per rule", classify.FLAGGED_SQL)
    timed("unattributed", m.UNATTRIBUTED_SQL, parameters)
    timed("source freshness", m.SOURCE_FRESHNESS_SQL, parameters)
    # The report sections (hot clicks, time series...) run their own queries through the same
    # connection; they are timed as one stage.
    begin = time.perf_counter()
    section_input = SectionInput(con=con, catalogs=catalogs, period=period,
                                 store=open_store(str(store)))
    for section in registered_sections():
        section.compute(section_input)
    timings["sections"] = time.perf_counter() - begin
    # The nightly run also computes the recipient summaries and reads back the classification
    # it writes; the same queries run here, without the writes.
    begin = time.perf_counter()
    compute_summaries(con, reporter_store.REPORT_DATE, period.end_utc)
    con.execute("SELECT count(*) FROM recipient_summaries").fetchall()
    timings["recipient summaries"] = time.perf_counter() - begin
    timed("classification rows", "SELECT c.*, CAST(e.event_time AT TIME ZONE 'UTC' AS DATE) "
          "FROM event_classes AS c JOIN events AS e USING (event_id) ORDER BY c.delivery_id")
    events = con.execute("SELECT count(*) FROM events").fetchone()[0]
    con.close()
    return {"seconds": time.perf_counter() - started, "stages": timings, "events": events,
            "deliveries": len(active), "figures": figures}


def run_reporter_nightly(store: Path, output: Path) -> dict:
    """Run run_nightly with timers around its query and rendering parts."""
    sys.path.insert(0, str(REPO / "bench"))
    import reporter_store
    from clicktrail.reporter import nightly
    from pypdf import PdfReader

    timings = {"query": 0.0, "render": 0.0, "pdf": 0.0, "writes": 0.0}
    computed_figures: dict[str, dict] = {}

    def timer(name: str, function):
        def wrapper(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timings[name] += time.perf_counter() - begin
        return wrapper

    original_compute = nightly._compute

    def compute_and_keep(*args, **kwargs):
        reports, quality = original_compute(*args, **kwargs)
        for computed in reports:
            metrics = computed.report.metrics
            computed_figures[computed.report.delivery_id] = {
                name: getattr(metrics, name)
                for name in ("processed", "delivered", "hard_bounces", "soft_bounces", "opens",
                             "unique_opens", "clicks", "unique_clickers", "unsubscriptions",
                             "events", "duplicate_rows")}
        return reports, quality

    # run_nightly looks these names up in its module at call time, so patching them there
    # times the real calls without changing the reporter.
    nightly._compute = timer("query", compute_and_keep)
    nightly._stage_outputs = timer("render", nightly._stage_outputs)
    nightly.write_pdf = timer("pdf", nightly.write_pdf)
    # The classification and the recipient summaries are written to the store inside the query
    # part; DuckDB alone writes nothing, so the table shows them apart.
    nightly.write_classified = timer("writes", nightly.write_classified)
    nightly.write_recipient_summaries = timer("writes", nightly.write_recipient_summaries)

    started = time.perf_counter()
    result = nightly.run_nightly(str(store), output, "UTC", reporter_store.REPORT_DATE,
                                 reporter_store.DAYS)
    seconds = time.perf_counter() - started
    pages = sum(len(PdfReader(result.report_dir / report.pdf_name).pages)
                for report in result.reports)
    return {"seconds": seconds, "query_seconds": timings["query"],
            "write_seconds": timings["writes"],
            "render_seconds": timings["render"], "pdf_seconds": timings["pdf"],
            "deliveries": len(result.reports), "pdf_pages": pages, "figures": computed_figures}


def run_child(mode: str, store: Path, scratch: Path) -> dict:
    """Run one measurement in a child process and add its peak RSS and load average."""
    result_path = scratch / f"{mode}.json"
    with open("/proc/loadavg", encoding="ascii") as file:
        load_before = " ".join(file.read().split()[:3])
    process = subprocess.Popen([sys.executable, __file__, "--child", mode, str(store),
                                "--scratch", str(scratch)], cwd=REPO)
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            os.wait4(process.pid, 0)
            raise RuntimeError(f"the {mode} child timed out after {CHILD_TIMEOUT_S} s")
        time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"the {mode} child failed with exit status {process.returncode}")

    result = json.loads(result_path.read_text(encoding="utf-8"))
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    result["load_before"] = load_before
    return result


def format_table(duckdb_result: dict, nightly_result: dict,
                 pyarrow_result: dict | None = None) -> str:
    query_ratio = nightly_result["query_seconds"] / duckdb_result["seconds"]
    writes = nightly_result.get("write_seconds", 0.0)
    aggregation_ratio = (nightly_result["query_seconds"] - writes) / duckdb_result["seconds"]
    pages = nightly_result["pdf_pages"]
    per_page = nightly_result["render_seconds"] / pages if pages else float("nan")
    lines = [
        "| run | wall s | CPU s | peak RSS MiB | load avg before |",
        "|---|---:|---:|---:|---|",
        f"| DuckDB alone (read_parquet + reporter SQL) | {duckdb_result['seconds']:.2f} | "
        f"{duckdb_result['cpu_seconds']:.2f} | {duckdb_result['peak_rss_mib']:.0f} | "
        f"{duckdb_result['load_before']} |",
    ]
    if pyarrow_result is not None:
        lines.append(
            f"| DuckDB over the reporter's pyarrow dataset + reporter SQL | "
            f"{pyarrow_result['seconds']:.2f} | {pyarrow_result['cpu_seconds']:.2f} | "
            f"{pyarrow_result['peak_rss_mib']:.0f} | {pyarrow_result['load_before']} |")
    lines += [
        f"| run_nightly, whole run | {nightly_result['seconds']:.2f} | "
        f"{nightly_result['cpu_seconds']:.2f} | {nightly_result['peak_rss_mib']:.0f} | "
        f"{nightly_result['load_before']} |",
        f"| run_nightly, query part (_compute) | {nightly_result['query_seconds']:.2f} | | | |",
        f"| run_nightly, of which the summaries and classification written to the store | "
        f"{writes:.2f} | | | |",
        f"| run_nightly, rendering (HTML + PDF) | {nightly_result['render_seconds']:.2f} | | | |",
        f"| run_nightly, of which write_pdf | {nightly_result['pdf_seconds']:.2f} | | | |",
        "",
        f"events after dedupe: {duckdb_result['events']:,}; deliveries: "
        f"{nightly_result['deliveries']}; PDF pages: {pages}",
        f"reporter query time / DuckDB alone: {query_ratio:.2f}x "
        f"(target at most {TARGET_QUERY_RATIO}x: {'met' if query_ratio <= TARGET_QUERY_RATIO else 'missed'})",
        f"without the summaries and classification written to the store: {aggregation_ratio:.2f}x "
        f"({'met' if aggregation_ratio <= TARGET_QUERY_RATIO else 'missed'})",
        f"rendering seconds per PDF page: {per_page:.2f} "
        f"(target at most {TARGET_SECONDS_PER_PAGE} s: "
        f"{'met' if per_page <= TARGET_SECONDS_PER_PAGE else 'missed'})",
    ]
    return "\n".join(lines)


def compare_figures(duckdb_result: dict, nightly_result: dict) -> list[str]:
    """List the delivery figures on which the reporter and DuckDB alone differ."""
    differences = []
    for delivery_id, reported in nightly_result["figures"].items():
        expected = duckdb_result["figures"].get(delivery_id, {})
        for name in ("processed", "delivered", "hard_bounces", "soft_bounces", "opens",
                     "unique_opens", "clicks", "unique_clickers", "unsubscriptions", "events"):
            if reported[name] != expected.get(name):
                differences.append(f"{delivery_id} {name}: reporter {reported[name]}, "
                                   f"DuckDB {expected.get(name)}")
    return differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path, help="store folder written by bench/reporter_store.py")
    parser.add_argument("--scratch", type=Path,
                        help="folder for DuckDB spill files, reports and results "
                             "(default: a temporary folder under /tmp, deleted afterwards)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--child", choices=CHILD_MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.child == "duckdb":
            result = run_duckdb_alone(args.store, args.scratch)
        elif args.child == "duckdb-pyarrow":
            result = run_duckdb_alone(args.store, args.scratch, reader="pyarrow")
        else:
            result = run_reporter_nightly(args.store, args.scratch / "reports")
        (args.scratch / f"{args.child}.json").write_text(json.dumps(result, default=str),
                                                         encoding="utf-8")
        return 0

    with tempfile.TemporaryDirectory(prefix="clicktrail-reporter-bench-") as temporary:
        scratch = args.scratch or Path(temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        duckdb_result = run_child("duckdb", args.store, scratch)
        pyarrow_result = run_child("duckdb-pyarrow", args.store, scratch)
        nightly_result = run_child("nightly", args.store, scratch)

    differences = compare_figures(duckdb_result, nightly_result)
    print(format_table(duckdb_result, nightly_result, pyarrow_result))
    print("figures equal for every delivery" if not differences
          else "figures differ:\n" + "\n".join(differences))
    if args.json:
        args.json.write_text(json.dumps({"duckdb": duckdb_result, "duckdb_pyarrow": pyarrow_result,
                                         "nightly": nightly_result},
                                        indent=2, default=str), encoding="utf-8")
    return 1 if differences else 0


if __name__ == "__main__":
    raise SystemExit(main())
