"""The nightly run: recompute every delivery with activity in the period and publish its reports.

Outputs for report date D land in `<output_dir>/<D>/`: index.html, and per delivery
`delivery-<id>.html` and `.pdf`. They are written into a staging directory first and then
renamed into place, so a rerun for the same date replaces the whole set.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import pyarrow as pa
from clicktrail.agent.config import ClassificationConfig

from . import metrics as m
from .catalog import DeliveryCatalog, load_catalog
from .classify import write_classified
from .errors import LockedError, OutputError, ReporterError, StoreError
from .period import ReportPeriod, make_period
from .recipients import write_recipient_summaries
from .render import make_environment, render_html, write_pdf
from .sections import Section, SectionInput, registered_sections
from .store import Store, events_dataset, open_store, rejects_dataset, safe_file_stem

log = logging.getLogger(__name__)

# DuckDB's memory limit when the config sets none ([report] max_memory_bytes).
DEFAULT_MAX_MEMORY_BYTES = 4 * 1024**3

LOCK_FILE = ".clicktrail-nightly.lock"
INDEX_FILE = "index.html"
# How often a run that waits for the lock tries again.
LOCK_POLL_INTERVAL_S = 0.5
# Report dates in one backfill at most: a year, leap years included.
MAX_BACKFILL_DAYS = 366

# Called after each delivery's report is rendered, with the report date, the number of reports
# rendered so far and the number to render.
ProgressCallback = Callable[[date, int, int], None]


@dataclass(frozen=True)
class DeliveryReport:
    delivery_id: str
    title: str
    html_name: str
    pdf_name: str
    metrics: m.DeliveryMetrics
    # Email addresses from the catalog entry, unchecked: the mail module validates them.
    owners: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataQuality:
    # (source name, source kind, rejected lines ingested in the period)
    rejects: list[tuple[str, str, int]] = field(default_factory=list)
    # (event type, events in the period without a delivery id)
    unattributed: list[tuple[str, int]] = field(default_factory=list)
    sources: list[m.SourceFreshness] = field(default_factory=list)


@dataclass(frozen=True)
class NightlyResult:
    """The directory, index page and delivery reports that a nightly run published."""

    report_dir: Path
    index_path: Path
    reports: list[DeliveryReport]
    report_date: date


def run_nightly(store_url: str, output_dir: str | os.PathLike[str], timezone: str,
                report_date: date | None = None, lookback_days: int = 30, *,
                store_endpoint_override: str | None = None,
                store_region: str | None = None,
                on_published: Callable[[NightlyResult], object] | None = None,
                max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
                classification: ClassificationConfig | None = None,
                lock_wait_s: float = 0,
                on_progress: ProgressCallback | None = None) -> NightlyResult:
    """Render the reports of every delivery with an event in the lookback period up to the
    end of report_date (default: yesterday in the report time zone) and publish them.

    on_published (the email step) is called with the result while the run still holds the
    lock, so no other run replaces the files it reads. Its exceptions propagate after the
    reports are published.

    When another run holds the lock, this run waits up to lock_wait_s seconds for it (0: not
    at all). on_progress replaces the log line per rendered delivery.

    Raises ReporterError (StoreError, OutputError, LockedError) with a message for the operator.
    """
    try:
        period = make_period(report_date, timezone, lookback_days)
    except ValueError as exc:
        raise ReporterError(str(exc)) from exc

    store = open_store(store_url, store_endpoint_override, store_region)
    output_root = Path(output_dir)
    _make_dir(output_root)

    with _run_lock(output_root, lock_wait_s), _scratch_dir(output_root) as scratch:
        log.info("nightly run for %s: deliveries with events from %s to %s (%s)",
                 period.report_date, period.first_day, period.report_date, timezone)
        reports, quality = _compute(store, period, scratch, max_memory_bytes,
                                    classification or ClassificationConfig())
        staging = _stage_outputs(output_root, period, reports, quality, on_progress)
        target = output_root / period.report_date.isoformat()
        _publish(staging, target)
        log.info("published %d delivery reports in %s", len(reports), target)

        result = NightlyResult(report_dir=target, index_path=target / INDEX_FILE,
                               reports=[computed.report for computed in reports],
                               report_date=period.report_date)
        if on_published is not None:
            on_published(result)
    return result


def backfill_dates(first_date: date, last_date: date) -> list[date]:
    """List the report dates from first_date to last_date, both included, in order.

    Raises ValueError when first_date is after last_date or the range has more than
    MAX_BACKFILL_DAYS dates.
    """
    if first_date > last_date:
        raise ValueError(f"the first date {first_date} is after the last date {last_date}; "
                         "pass the earlier date first")

    days = (last_date - first_date).days + 1
    if days > MAX_BACKFILL_DAYS:
        raise ValueError(f"the range {first_date} to {last_date} has {days} dates, more than "
                         f"the {MAX_BACKFILL_DAYS} of one backfill; split it into several runs")
    return [first_date + timedelta(days=offset) for offset in range(days)]


def run_backfill(store_url: str, output_dir: str | os.PathLike[str], timezone: str,
                 first_date: date, last_date: date,
                 **options: Any) -> Iterator[NightlyResult]:
    """Run the nightly reports for each date from first_date to last_date, in order.

    Each date is a run of its own, with run_nightly's options: it takes the lock, and
    publishes its directory atomically before the next date starts. The results are yielded
    as each date is published, so a failure leaves the earlier dates in place.

    Raises ValueError for an invalid range (see backfill_dates) before any run starts.
    """
    # Checked here, outside the generator, so that a bad range fails at the call.
    dates = backfill_dates(first_date, last_date)
    return _run_dates(store_url, output_dir, timezone, dates, options)


def _run_dates(store_url: str, output_dir: str | os.PathLike[str], timezone: str,
               dates: list[date], options: dict[str, Any]) -> Iterator[NightlyResult]:
    for number, report_date in enumerate(dates, start=1):
        log.info("backfill: report date %s (%d of %d)", report_date, number, len(dates))
        yield run_nightly(store_url, output_dir, timezone, report_date, **options)


def report_file_stem(delivery_id: str) -> str:
    """Name a delivery's report files; ids that are not plain names are hashed."""
    return safe_file_stem("delivery", delivery_id)


@dataclass(frozen=True)
class ComputedReport:
    report: DeliveryReport
    catalog: DeliveryCatalog
    # (section, the context its template receives as `data`), in registry order
    sections: list[tuple[Section, object]]


def _compute(store: Store, period: ReportPeriod, scratch: Path, max_memory_bytes: int,
             classification: ClassificationConfig) -> tuple[list[ComputedReport], DataQuality]:
    events = events_dataset(store)
    rejects = rejects_dataset(store)

    # DuckDB spills to scratch when a query outgrows its memory limit. Without a limit it takes
    # 80 % of the machine's memory, which a nightly job beside other services must not.
    settings = {"temp_directory": str(scratch)}
    if max_memory_bytes:
        settings["memory_limit"] = f"{max_memory_bytes // (1024 * 1024)}MB"
    con = duckdb.connect(config=settings)
    try:
        active = m.find_active_deliveries(con, events, period)
        log.info("%d deliveries with events in the period", len(active))
        catalogs = {delivery_id: load_catalog(store, delivery_id) for delivery_id in active}

        duplicates = m.prepare_events(con, active, period, catalogs, classification)
        figures = m.compute_metrics(con, catalogs, duplicates)
        write_classified(con, store, scratch, {d: report_file_stem(d) for d in active})
        section_input = SectionInput(con=con, catalogs=catalogs, period=period, store=store)
        section_data = [(section, section.compute(section_input))
                        for section in registered_sections()]
        write_recipient_summaries(section_input, scratch)
        quality = DataQuality(rejects=m.count_rejects(con, rejects, period),
                              unattributed=m.count_unattributed(con, period),
                              sources=m.source_freshness(con, period))
    except (duckdb.Error, pa.ArrowException, OSError) as exc:
        raise StoreError(f"failed to query the store {store.url}: {exc}",
                         store_url=store.url) from exc
    finally:
        con.close()

    reports = []
    for delivery_id in active:
        catalog = catalogs[delivery_id]
        stem = report_file_stem(delivery_id)
        report = DeliveryReport(
            delivery_id=delivery_id,
            title=catalog.name or f"Delivery {delivery_id}",
            html_name=f"{stem}.html",
            pdf_name=f"{stem}.pdf",
            metrics=figures[delivery_id],
            owners=catalog.owners,
        )
        sections = [(section, data.get(delivery_id)) for section, data in section_data]
        reports.append(ComputedReport(report, catalog, sections))
    return reports, quality


def _stage_outputs(output_root: Path, period: ReportPeriod, reports: list[ComputedReport],
                   quality: DataQuality, on_progress: ProgressCallback | None = None) -> Path:
    env = make_environment()
    common = {"period": period, "zone": period.timezone, "quality": quality,
              "generated_at": datetime.now(UTC)}
    staging = Path(tempfile.mkdtemp(prefix=f".{period.report_date.isoformat()}.tmp-",
                                    dir=output_root))
    try:
        for number, computed in enumerate(reports, start=1):
            report = computed.report
            context = {**common, "delivery_id": report.delivery_id, "title": report.title,
                       "catalog": computed.catalog, "metrics": report.metrics,
                       "sections": computed.sections}
            html = render_html(env, "delivery.html.j2", context)
            (staging / report.html_name).write_text(html, encoding="utf-8")
            write_pdf(html, staging / report.pdf_name)
            if on_progress is None:
                log.info("rendered delivery %r (%d of %d)", report.delivery_id, number,
                         len(reports))
            else:
                log.debug("rendered delivery %r (%d of %d)", report.delivery_id, number,
                          len(reports))
                on_progress(period.report_date, number, len(reports))

        index = render_html(env, "index.html.j2",
                            {**common, "reports": [r.report for r in reports]})
        (staging / INDEX_FILE).write_text(index, encoding="utf-8")
        # mkdtemp creates the directory 0700; the reports are meant to be served and shared.
        staging.chmod(0o755)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _publish(staging: Path, target: Path) -> None:
    # NOTE: this takes two renames, so for an instant a reader finds no directory. A crash
    # between them leaves the previous set in `.<date>.old-*`, which the next run deletes.
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    try:
        if target.exists():
            os.rename(target, old)
        os.rename(staging, target)
    except OSError as exc:
        raise OutputError(f"failed to move the reports into {target}: {exc}",
                          path=str(target)) from exc
    shutil.rmtree(old, ignore_errors=True)


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output directory {path}: {exc}; check "
                          "[report] output_dir", path=str(path)) from exc


@contextmanager
def _run_lock(output_root: Path, wait_s: float = 0) -> Iterator[None]:
    """Hold an exclusive lock on the output directory, and clean leftovers of crashed runs."""
    lock_path = output_root / LOCK_FILE
    with open(lock_path, "a+b") as lock_file:
        _acquire_lock(lock_file, lock_path, output_root, wait_s)
        _remove_leftovers(output_root)
        yield


def _acquire_lock(lock_file: BinaryIO, lock_path: Path, output_root: Path,
                  wait_s: float) -> None:
    # flock without LOCK_NB cannot time out, so a run that may wait polls instead.
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError as exc:
            if wait_s <= 0:
                raise LockedError(f"another nightly run is using {output_root}: {lock_path} is "
                                  "locked; wait for that run to finish, or pass --wait SECONDS",
                                  path=str(lock_path)) from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockedError(f"another nightly run is using {output_root}: {lock_path} "
                                  f"was still locked after waiting {wait_s:g} s; wait for that "
                                  "run to finish or pass a longer --wait",
                                  path=str(lock_path)) from exc

        if not waiting:
            log.info("waiting up to %g s for the lock %s of another nightly run", wait_s,
                     lock_path)
            waiting = True
        time.sleep(min(LOCK_POLL_INTERVAL_S, remaining))

    if waiting:
        log.info("acquired %s after waiting", lock_path)


def _remove_leftovers(output_root: Path) -> None:
    # Only a run holding the lock gets here, so every staging or old directory is stale.
    for pattern in (".*.tmp-*", ".*.old-*", ".duckdb-*"):
        for leftover in output_root.glob(pattern):
            log.info("removing leftover %s of an interrupted run", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def _scratch_dir(output_root: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=".duckdb-", dir=output_root) as scratch:
        yield Path(scratch)
