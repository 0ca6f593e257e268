"""The clicktrail-report command line: parse options, call one function, report errors."""

from __future__ import annotations

import functools
import logging
import ssl
from datetime import datetime

import click
from clicktrail.agent.config import ConfigError, load_config
from clicktrail.agent.logutil import setup_logging

from .catalog import import_catalog
from .errors import ReporterError
from .mail import EMAIL_DIR, email_reports
from .nightly import run_nightly
from .retention import check_erasable_ids, erase_recipient, purge_before
from .store import Store, open_store

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
def nightly(config_path: str, report_date: datetime | None, send_email: bool,
            dry_run: bool) -> None:
    """Render the reports of every delivery with events in the last lookback_days days.

    Each delivery is recomputed from all its events up to the end of the report date, and the
    HTML and PDF reports plus an index.html are published in OUTPUT_DIR/YYYY-MM-DD/. With
    --email, each PDF is then sent over SMTP as [email] sets. If a recipient is not reached,
    the exit status is 1 and the reports stay published.

    Example: clicktrail-report nightly --config /etc/clicktrail/clicktrail.toml --date 2026-12-03

    Example: clicktrail-report nightly --config /etc/clicktrail/clicktrail.toml --email --dry-run
    """
    if report_date is not None and not 1970 <= report_date.year <= 2199:
        raise click.BadParameter(f"{report_date.date()} is outside 1970-01-01 to 2199-12-31",
                                 param_hint="--date")
    if dry_run and not send_email:
        raise click.UsageError("--dry-run applies to --email; pass both to write .eml files")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise ConfigClickError(str(exc)) from exc

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

    try:
        result = run_nightly(
            store_url=config.store.url,
            output_dir=config.report.output_dir,
            timezone=config.report.timezone,
            report_date=report_date.date() if report_date else None,
            lookback_days=config.report.lookback_days,
            store_endpoint_override=config.store.endpoint_override,
            store_region=config.store.region,
            on_published=on_published,
            max_memory_bytes=config.report.max_memory_bytes,
        )
    except ReporterError as exc:
        raise click.ClickException(str(exc)) from exc

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
    """Delete events/, rejects/ and classified/ partitions dated before a day.

    Only folders named event_date=YYYY-MM-DD are deleted. Any other entry is left alone and
    listed.

    Example: clicktrail-report purge --config /etc/clicktrail/clicktrail.toml --before 2026-06-01
    """
    store = _open_configured_store(config_path)
    try:
        result = purge_before(store, before.date(), dry_run=dry_run)
    except ReporterError as exc:
        raise click.ClickException(str(exc)) from exc

    verb = "would delete" if dry_run else "deleted"
    for relative in result.deleted:
        click.echo(f"{verb} {relative}")
    for relative in result.unrecognised:
        click.echo(f"left alone {relative}: not a partition named event_date=YYYY-MM-DD")
    click.echo(f"{len(result.deleted)} partitions {verb}, {result.kept} kept, "
               f"{len(result.unrecognised)} other entries left alone", err=True)


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
    """Rewrite the events/ and rejects/ files that contain a recipient's rows without them.

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


def _open_configured_store(config_path: str) -> Store:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise ConfigClickError(str(exc)) from exc
    try:
        return open_store(config.store.url, config.store.endpoint_override, config.store.region)
    except ReporterError as exc:
        raise click.ClickException(str(exc)) from exc
