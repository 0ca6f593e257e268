"""The clicktrail-report command line: parse options, call one function, report errors."""

from __future__ import annotations

import logging
from datetime import datetime

import click
from clicktrail.agent.config import ConfigError, load_config

from .catalog import import_catalog
from .errors import ReporterError
from .nightly import run_nightly
from .store import open_store

# sysexits.h EX_CONFIG: systemd units are set not to restart on it.
EXIT_CONFIG = 78


class ConfigClickError(click.ClickException):
    exit_code = EXIT_CONFIG


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages on stderr.")
def main(verbose: bool) -> None:
    """Render delivery reports from the clicktrail store."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # WeasyPrint and fontTools log every layout step and font subset at INFO.
    for noisy in ("weasyprint.progress", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.command()
@click.option("--config", "config_path", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help="The clicktrail TOML config file ([store] and [report] are read).")
@click.option("--date", "report_date", type=click.DateTime(formats=["%Y-%m-%d"]),
              metavar="YYYY-MM-DD",
              help="Report date YYYY-MM-DD in the report time zone. Default: yesterday.")
def nightly(config_path: str, report_date: datetime | None) -> None:
    """Render the reports of every delivery with events in the last lookback_days days.

    Each delivery is recomputed from all its events up to the end of the report date, and the
    HTML and PDF reports plus an index.html are published in OUTPUT_DIR/YYYY-MM-DD/.

    Example: clicktrail-report nightly --config /etc/clicktrail/clicktrail.toml --date 2026-12-03
    """
    if report_date is not None and not 1970 <= report_date.year <= 2199:
        raise click.BadParameter(f"{report_date.date()} is outside 1970-01-01 to 2199-12-31",
                                 param_hint="--date")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise ConfigClickError(str(exc)) from exc

    try:
        result = run_nightly(
            store_url=config.store.url,
            output_dir=config.report.output_dir,
            timezone=config.report.timezone,
            report_date=report_date.date() if report_date else None,
            lookback_days=config.report.lookback_days,
            store_endpoint_override=config.store.endpoint_override,
            store_region=config.store.region,
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
