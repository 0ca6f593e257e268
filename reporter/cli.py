"""The clicktrail-report command line: parse options, call one function, report errors."""

from __future__ import annotations

import functools
import logging
import ssl
import sys
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import click
from clicktrail.agent.config import ConfigError, load_config
from clicktrail.agent.logutil import setup_logging

from .catalog import import_catalog
from .errors import ReporterError
from .mail import EMAIL_DIR, email_reports
from .nightly import MAX_BACKFILL_DAYS, NightlyResult, backfill_dates, run_backfill, run_nightly
from .recipient_history import MAX_RECIPIENT_ID_CHARS, default_output_path, load_history, write_history
from .retention import check_erasable_ids, erase_recipient, partition_key, purge_before
from .store import Store, open_store

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

# sysexits.h EX_CONFIG: systemd units are set not to restart on it.
EXIT_CONFIG = 78


class ConfigClickError(click.ClickException):
    exit_code = EXIT_CONFIG


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages on stderr.")
def main(verbose: bool) -> None:
    """Render delivery reports from the clicktrail store."""
    # Under systemd the journal adds the time and reads the level from a priority prefix.
    setup_logging(logging.DEBUG if verbose else logging.INFO)
    # WeasyPrint and fontTools log every layout step and font subset at INFO.
    for noisy in ("weasyprint.progress", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.command()
@click.option("--config", "config_path", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="The clicktrail TOML config file ([store] and [report] are read, and "
                   "[email] with --email).")
@click.option("--date", "report_date", type=click.DateTime(formats=["%Y-%m-%d"]),
              metavar="YYYY-MM-DD",
              help="Report date YYYY-MM-DD in the report time zone. Default: yesterday.")
@click.option("--email", "send_email", is_flag=True,
              help="Email each delivery's PDF to its catalog owners and [email] to.")
@click.option("--dry-run", is_flag=True,
              help=f"With --email, write the messages to OUTPUT_DIR/YYYY-MM-DD/{EMAIL_DIR}/ as "
                   ".eml files instead of sending them.")
@click.option("--from", "first_date", type=click.DateTime(formats=["%Y-%m-%d"]),
              metavar="YYYY-MM-DD",
              help="Backfill: the first report date of a range, with --to. Each date of the "
                   f"range is rendered and published in turn, {MAX_BACKFILL_DAYS} dates at most.")
@click.option("--to", "last_date", type=click.DateTime(formats=["%Y-%m-%d"]),
              metavar="YYYY-MM-DD", help="Backfill: the last report date of the range, included.")
@click.option("--wait", "wait_s", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="SECONDS",
              help="When another nightly run has locked the output directory, wait up to "
                   "SECONDS for it instead of exiting with an error at once.")
def nightly(config_path: str, report_date: datetime | None, send_email: bool,
            dry_run: bool, first_date: datetime | None, last_date: datetime | None,
            wait_s: int) -> None:
    """Render the reports of every delivery with events in the last lookback_days days.

    Each delivery is recomputed from all its events up to the end of the report date, and the
    HTML and PDF reports plus an index.html are published in OUTPUT_DIR/YYYY-MM-DD/. With
    --email, each PDF is then sent over SMTP as [email] sets. If a recipient is not reached,
    the exit status is 1 and the reports stay published. With --from and --to, the same is done
    for each date of the range, and each index path is printed once its date is published.

    Example: clicktrail-report nightly --config /etc/clicktrail/clicktrail.toml --date 2026-12-03

    Example: clicktrail-report nightly --config /etc/clicktrail/clicktrail.toml --email --dry-run

    Example: clicktrail-report nightly --config clicktrail.toml --from 2026-11-01 --to 2026-11-30
    """
    for value, option in ((report_date, "--date"), (first_date, "--from"), (last_date, "--to")):
        _check_year(value, option)
    dates = _backfill_range(report_date, first_date, last_date)
    if dry_run and not send_email:
        raise click.UsageError("--dry-run applies to --email; pass both to write .eml files")
    if send_email and dates is not None:
        raise click.UsageError("--email sends the reports of one date; run a backfill with "
                               "--from and --to without --email")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise ConfigClickError(str(exc)) from exc
    _check_not_future(config.report.timezone, report_date, last_date)

    on_published = None
    if send_email:
        if config.email is None:
            raise ConfigClickError(f"{config.path}: --email needs an [email] table with smtp_host "
                                   "and from (config.example.toml documents it)")
        # A private mail server's CA comes from [email] ca_file; the system CAs otherwise.
        ssl_context = ssl.create_default_context(cafile=config.email.ca_file)
        on_published = functools.partial(email_reports, config.email, dry_run=dry_run,
                                         local_hostname=config.agent.host_id,
                                         ssl_context=ssl_context)

    # A progress bar only on a terminal: in the journal or a cron mail, the log line per
    # delivery is what a reader can follow.
    progress = RenderProgress() if sys.stderr.isatty() else None
    options = {
        "lookback_days": config.report.lookback_days,
        "store_endpoint_override": config.store.endpoint_override,
        "store_region": config.store.region,
        "on_published": on_published,
        "max_memory_bytes": config.report.max_memory_bytes,
        "classification": config.report.classification,
        "lock_wait_s": wait_s,
        "on_progress": progress,
    }
    results: Iterable[NightlyResult]
    try:
        if dates is None:
            results = [run_nightly(config.store.url, config.report.output_dir,
                                   config.report.timezone,
                                   report_date.date() if report_date else None, **options)]
        else:
            results = run_backfill(config.store.url, config.report.output_dir,
                                   config.report.timezone, *dates, **options)
        for result in results:
            _echo_result(result)
    except ReporterError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if progress is not None:
            progress.close()


class RenderProgress:
    """A click progress bar on stderr per report date, advanced once per rendered delivery."""

    def __init__(self) -> None:
        self._bar: ProgressBar[int] | None = None
        self._date: date | None = None

    def __call__(self, report_date: date, rendered: int, total: int) -> None:
        if self._bar is None or report_date != self._date:
            self.close()
            self._bar = click.progressbar(length=total, label=f"Rendering {report_date}",
                                          show_pos=True, file=sys.stderr)
            self._date = report_date
        self._bar.update(1)
        if rendered == total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.render_finish()
            self._bar = None


def _check_year(value: datetime | None, option: str) -> None:
    if value is not None and not 1970 <= value.year <= 2199:
        raise click.BadParameter(f"{value.date()} is outside 1970-01-01 to 2199-12-31",
                                 param_hint=option)


def _backfill_range(report_date: datetime | None, first_date: datetime | None,
                    last_date: datetime | None) -> tuple[date, date] | None:
    """Return the (first, last) dates of a backfill, or None for a single date."""
    if first_date is None and last_date is None:
        return None
    if report_date is not None:
        raise click.UsageError("--date and --from/--to cannot be combined: pass one date with "
                               "--date or a range with --from and --to")
    if first_date is None or last_date is None:
        missing = "--to" if last_date is None else "--from"
        raise click.UsageError(f"a backfill range needs both --from and --to; {missing} is "
                               "missing")
    try:
        backfill_dates(first_date.date(), last_date.date())
    except ValueError as exc:
        raise click.UsageError(f"invalid --from/--to: {exc}") from exc
    return first_date.date(), last_date.date()


def _echo_result(result: NightlyResult) -> None:
    click.echo(f"{len(result.reports)} delivery reports in {result.report_dir}", err=True)
    click.echo(str(result.index_path))


@main.command("import-catalog")
@click.option("--config", "config_path", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="The clicktrail TOML config file ([store] is read).")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def import_catalog_command(config_path: str, files: tuple[str, ...]) -> None:
    """Check delivery catalog entries (JSON files) and copy them into the store.

    Each file describes one delivery: name, subject, send time, owners and its links with their
    type (click, unsubscribe, mirror). Nothing is written unless every file is valid.

    Example: clicktrail-report import-catalog --config clicktrail.toml catalog/4d5e6.json
    """
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise ConfigClickError(str(exc)) from exc

    try:
        store = open_store(config.store.url, config.store.endpoint_override, config.store.region)
        imported = import_catalog(store, list(files))
    except (ReporterError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"imported {len(imported)} catalog entries into {config.store.url}")


@main.command()
@click.option("--config", "config_path", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="The clicktrail TOML config file ([store] is read).")
@click.option("--before", "before", required=True, type=click.DateTime(formats=["%Y-%m-%d"]),
              metavar="YYYY-MM-DD",
              help="Delete partitions of UTC days before this date. Partitions of the date itself are "
                   "kept.")
@click.option("--dry-run", is_flag=True, help="List the partitions to delete without deleting.")
def purge(config_path: str, before: datetime, dry_run: bool) -> None:
    """Delete events/, rejects/, classified/ and summaries/recipients/ partitions dated before a
    day.

    Only folders named event_date=YYYY-MM-DD (first_event_date=YYYY-MM-DD in
    summaries/recipients/) are deleted. Any other entry is left alone and listed.

    Example: clicktrail-report purge --config /etc/clicktrail/clicktrail.toml --before 2026-06-01
    """
    # Partitions of today and later hold data still being collected and reported: a date past
    # today is most likely a mistyped year.
    today = datetime.now(UTC).date()
    if before.date() > today:
        raise click.UsageError(f"--before {before.date().isoformat()} is after today "
                               f"({today.isoformat()} UTC) and would delete the data of the "
                               "running period; check the year")
    store = _open_configured_store(config_path)
    try:
        result = purge_before(store, before.date(), dry_run=dry_run)
    except ReporterError as exc:
        raise click.ClickException(str(exc)) from exc

    verb = "to delete" if dry_run else "deleted"
    for relative in result.deleted:
        click.echo(f"{'would delete' if dry_run else 'deleted'} {relative}")
    for relative in result.unrecognised:
        click.echo(f"left alone {relative}: not a partition named "
                   f"{partition_key(relative)}=YYYY-MM-DD")
    click.echo(f"partitions {verb}: {len(result.deleted)}, kept: {result.kept}, other entries "
               f"left alone: {len(result.unrecognised)}", err=True)


@main.command("erase-recipient")
@click.option("--config", "config_path", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="The clicktrail TOML config file ([store] is read).")
@click.option("--recipient-id", required=True,
              help="The recipient id to erase: 1-128 letters, digits and _.:@+=-")
@click.option("--delivery-id", default=None,
              help="Erase only this delivery's events of the recipient.")
def erase_recipient_command(config_path: str, recipient_id: str,
                            delivery_id: str | None) -> None:
    """Rewrite the events/, summaries/recipients/ and rejects/ files that contain a recipient's
    rows without them.

    A rejected line is removed when its text contains the id, so a short id also removes
    rejected lines of other recipients.

    Example: clicktrail-report erase-recipient --config clicktrail.toml --recipient-id r42
    """
    try:
        check_erasable_ids(recipient_id, delivery_id)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    store = _open_configured_store(config_path)
    try:
        result = erase_recipient(store, recipient_id, delivery_id)
    except ReporterError as exc:
        raise click.ClickException(str(exc)) from exc

    for relative in result.files_rewritten:
        click.echo(f"rewrote {relative}")
    for relative in result.files_deleted:
        click.echo(f"deleted {relative}: no rows remained")
    click.echo(f"{result.rows_removed} rows removed from "
               f"{len(result.files_rewritten) + len(result.files_deleted)} of "
               f"{result.files_scanned} files", err=True)

    # A tracking history rendered by `recipient` is a copy of the erased rows: remove it too.
    # NOTE: published delivery reports count the recipient only in totals, and stay.
    output_dir = load_config(config_path).report.output_dir
    for output_format in ("html", "pdf"):
        rendered = default_output_path(output_dir, recipient_id, output_format)
        try:
            rendered.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise click.ClickException(f"cannot delete the rendered history {rendered}: "
                                       f"{exc.strerror}; delete it by hand") from exc
        click.echo(f"deleted {rendered}")


@main.command("recipient")
@click.option("--config", "config_path", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="The clicktrail TOML config file ([store] and [report] are read).")
@click.option("--format", "output_format", type=click.Choice(["html", "pdf"]), default="html",
              show_default=True, help="The output file format.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False), default=None,
              help="The file to write. Default: OUTPUT_DIR/recipients/recipient-ID.html (or .pdf); "
                   "an id that is not 1-64 letters, digits, '_' or '-' is replaced by a hash.")
@click.argument("recipient_id")
def recipient_command(config_path: str, output_format: str, output_path: str | None,
                      recipient_id: str) -> None:
    """Render one recipient's tracking history: every event with its time, delivery, URL,
    client and class, and totals per delivery.

    RECIPIENT_ID is the recipient id of the events (Adobe Campaign's broadlog id), matched
    exactly. The exit status is 1 when the store has no event of it. Times are shown in
    [report] timezone. The path of the written file is printed.

    Example: clicktrail-report recipient --config clicktrail.toml --format pdf 1f3a9c
    """
    if not 1 <= len(recipient_id) <= MAX_RECIPIENT_ID_CHARS:
        raise click.BadParameter(f"expected 1-{MAX_RECIPIENT_ID_CHARS} characters, got "
                                 f"{len(recipient_id)}", param_hint="RECIPIENT_ID")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise ConfigClickError(str(exc)) from exc

    if output_path is not None:
        target = Path(output_path)
    else:
        target = default_output_path(config.report.output_dir, recipient_id, output_format)
    try:
        store = open_store(config.store.url, config.store.endpoint_override, config.store.region)
        history = load_history(store, recipient_id)
        write_history(history, ZoneInfo(config.report.timezone), output_format, target)
    except ReporterError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{history.total_events} events of the recipient in {len(history.deliveries)} "
               "deliveries", err=True)
    click.echo(str(target))


def _check_not_future(timezone: str, *dates: datetime | None) -> None:
    """Reject a report date after today in the report time zone: it has no events yet."""
    today = datetime.now(ZoneInfo(timezone)).date()
    for value in dates:
        if value is not None and value.date() > today:
            raise click.UsageError(f"{value.date().isoformat()} is in the future (today is "
                                   f"{today.isoformat()} in {timezone}); check the date")


def _open_configured_store(config_path: str) -> Store:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise ConfigClickError(str(exc)) from exc
    try:
        return open_store(config.store.url, config.store.endpoint_override, config.store.region)
    except ReporterError as exc:
        raise click.ClickException(str(exc)) from exc
