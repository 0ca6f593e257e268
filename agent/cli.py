"""clicktrail-agent: the command line of the agent. Each command calls one function."""

from __future__ import annotations

import json
import logging
import sys
import time

import click

DEFAULT_CONFIG = "/etc/clicktrail/clicktrail.toml"
config_option = click.option(
    "--config", "config_path", envvar="CLICKTRAIL_CONFIG", default=DEFAULT_CONFIG,
    show_default=True, type=click.Path(dir_okay=False),
    help="TOML config file (also read from $CLICKTRAIL_CONFIG).")


def _setup_logging(verbose: int) -> None:
    from .logutil import setup_logging

    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    setup_logging(level)


def _load(config_path: str):
    # Imported here because the config imports pyarrow, and `run` must choose pyarrow's memory
    # pool before pyarrow's import (see clicktrail.agent.daemon).
    from .config import EX_CONFIG, ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(f"Error: invalid configuration: {exc}", err=True)
        sys.exit(EX_CONFIG)


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
@click.version_option(package_name="clicktrail")
def main(verbose: int) -> None:
    """Tail tracking-server and MTA logs into Hive-partitioned Parquet in a central store."""
    _setup_logging(verbose)


@main.command("check-config")
@config_option
def check_config(config_path: str) -> None:
    """Validate the config file and exit 0, or print what is wrong and exit 78.

    Example: clicktrail-agent check-config --config /etc/clicktrail/clicktrail.toml
    """
    config = _load(config_path)
    click.echo(f"{config.path}: OK ({len(config.sources)} source(s), store {config.store.url})")


@main.command()
@config_option
def run(config_path: str) -> None:
    """Run as a service: tail every source, seal batches, upload them, until SIGTERM.

    Speaks the systemd notify protocol when NOTIFY_SOCKET is set (READY=1, WATCHDOG=1,
    STOPPING=1). SIGHUP reloads the config; an invalid config exits with status 78.
    Example: clicktrail-agent run --config /etc/clicktrail/clicktrail.toml
    """
    from .daemon import Daemon

    # A service logs its lifecycle and counts (INFO) unless -vv asked for more.
    root = logging.getLogger()
    root.setLevel(min(root.level, logging.INFO))
    config = _load(config_path)
    sys.exit(Daemon(config_path, config).run())


@main.command()
@config_option
def once(config_path: str) -> None:
    """Read every source from its checkpoint to the end, write events to the store, exit.

    For backfills and tests; the service runs `clicktrail-agent run`.
    Example: clicktrail-agent once --config clicktrail.toml
    """
    from .pipeline import run_once
    from .store import StoreError

    config = _load(config_path)
    started = time.monotonic()
    try:
        result = run_once(config)
    except StoreError as exc:
        raise click.ClickException(f"store {config.store.url}: {exc}; the batches stay in the "
                                   f"spool under {config.agent.state_dir} and are uploaded by "
                                   "the next run") from exc
    click.echo(f"read {result.files_read} file(s), {result.lines} line(s): {result.events} "
               f"event(s), {result.rejects} rejected line(s), {result.uploaded} file(s) "
               f"uploaded to {config.store.url} in {time.monotonic() - started:.1f} s")


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(config_path: str, as_json: bool) -> None:
    """Show per file its offset, size and lag; the spool; the last upload and error.

    Example: clicktrail-agent status --config /etc/clicktrail/clicktrail.toml
    """
    from .status import collect_status, format_status

    config = _load(config_path)
    report = collect_status(config)
    click.echo(json.dumps(report, indent=2) if as_json else format_status(report))


if __name__ == "__main__":
    main()
