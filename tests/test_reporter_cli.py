"""clicktrail-report nightly: exit codes and messages."""

from __future__ import annotations

import logging
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from clicktrail.reporter.cli import EXIT_CONFIG, main
from clicktrail.reporter.nightly import LOCK_FILE

from tests.reporter_fixtures import build_sample_store

pytestmark = pytest.mark.filterwarnings(
    "ignore:HarfBuzz-Subset will be required:DeprecationWarning")


def write_config(tmp_path: Path, store_url: str, extra: str = "") -> Path:
    path = tmp_path / "clicktrail.toml"
    path.write_text(
        f'[store]\nurl = "{store_url}"\n\n'
        f'[report]\ntimezone = "Europe/Paris"\noutput_dir = "{tmp_path / "reports"}"\n{extra}',
        encoding="utf-8",
    )
    return path


def test_nightly_prints_index_path(tmp_path: Path) -> None:
    build_sample_store(tmp_path / "store")
    config = write_config(tmp_path, (tmp_path / "store").as_uri())

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--date", "2026-12-03"])

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "reports" / "2026-12-03" / "index.html")
    assert (tmp_path / "reports" / "2026-12-03" / "delivery-d1.pdf").is_file()


def test_nightly_missing_store_exit_1(tmp_path: Path) -> None:
    config = write_config(tmp_path, str(tmp_path / "nowhere"))

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--date", "2026-12-03"])

    assert result.exit_code == 1
    assert "Error: store not found:" in result.stderr
    assert "Traceback" not in result.output


def test_nightly_invalid_config_exit_78(tmp_path: Path) -> None:
    config = write_config(tmp_path, str(tmp_path), extra="lookback_days = 0\n")

    result = CliRunner().invoke(main, ["nightly", "--config", str(config)])

    assert result.exit_code == EXIT_CONFIG
    assert "lookback_days" in result.stderr


def test_nightly_invalid_date_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, str(tmp_path))

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--date", "03/12/2026"])

    assert result.exit_code == 2
    assert "Invalid value for '--date'" in result.stderr


def test_nightly_backfill_range(tmp_path: Path) -> None:
    build_sample_store(tmp_path / "store")
    config = write_config(tmp_path, (tmp_path / "store").as_uri())
    reports = tmp_path / "reports"

    result = CliRunner().invoke(main, ["nightly", "--config", str(config),
                                       "--from", "2026-12-02", "--to", "2026-12-03"])

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(reports / "2026-12-02" / "index.html"),
                                          str(reports / "2026-12-03" / "index.html")]
    # Up to the end of 2 December in Paris, r3's click at 00:30 on the 3rd is not counted yet.
    first = (reports / "2026-12-02" / "delivery-d1.html").read_text(encoding="utf-8")
    second = (reports / "2026-12-03" / "delivery-d1.html").read_text(encoding="utf-8")
    assert "unique clickers / delivered: 2 / 6 and 2 / 6" in first
    assert "unique clickers / delivered: 3 / 6 and 3 / 6" in second
    assert sorted(path.name for path in (reports / "2026-12-02").iterdir()) == [
        "delivery-d1.html", "delivery-d1.pdf", "index.html"]
    assert (reports / "2026-12-03" / "delivery-d2.pdf").is_file()


BACKFILL_USAGE_CASES = [
    ("from-after-to", ["--from", "2026-12-04", "--to", "2026-12-03"],
     "invalid --from/--to: the first date 2026-12-04 is after the last date 2026-12-03"),
    ("too-long", ["--from", "2025-12-01", "--to", "2026-12-02"],
     "invalid --from/--to: the range 2025-12-01 to 2026-12-02 has 367 dates, more than the 366 "
     "of one backfill; split it into several runs"),
    ("no-to", ["--from", "2026-12-01"], "a backfill range needs both --from and --to; --to is "
                                        "missing"),
    ("no-from", ["--to", "2026-12-01"], "a backfill range needs both --from and --to; --from is "
                                        "missing"),
    ("with-date", ["--date", "2026-12-01", "--from", "2026-12-01", "--to", "2026-12-02"],
     "--date and --from/--to cannot be combined"),
    ("with-email", ["--email", "--from", "2026-12-01", "--to", "2026-12-02"],
     "--email sends the reports of one date"),
    ("negative-wait", ["--wait", "-1"], "Invalid value for '--wait'"),
    ("year", ["--from", "1969-12-31", "--to", "2026-12-02"],
     "Invalid value for --from: 1969-12-31 is outside 1970-01-01 to 2199-12-31"),
    ("future-date", ["--date", "2199-01-01"], "2199-01-01 is in the future (today is "),
]


@pytest.mark.parametrize(("arguments", "message"), [c[1:] for c in BACKFILL_USAGE_CASES],
                         ids=[c[0] for c in BACKFILL_USAGE_CASES])
def test_nightly_backfill_usage_errors(tmp_path: Path, arguments: list[str], message: str) -> None:
    config = write_config(tmp_path, str(tmp_path / "store"))

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), *arguments])

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "reports").exists()


# Holds an exclusive flock on a file until killed, as a running nightly run holds its lock.
HOLD_LOCK = """
import fcntl, sys, time
lock_file = open(sys.argv[1], "a+b")
fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Start a process that holds the output directory's lock, and kill it after the test."""
    (tmp_path / "reports").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK,
                               str(tmp_path / "reports" / LOCK_FILE), "300"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()


def test_nightly_locked_exits_at_once(tmp_path: Path, lock_holder: subprocess.Popen[str]) -> None:
    build_sample_store(tmp_path / "store")
    config = write_config(tmp_path, str(tmp_path / "store"))

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--date", "2026-12-03"])

    assert result.exit_code == 1
    assert (f"Error: another nightly run is using {tmp_path / 'reports'}: "
            f"{tmp_path / 'reports' / LOCK_FILE} is locked; wait for that run to finish"
            in result.stderr)
    assert lock_holder.poll() is None


def test_nightly_wait_gives_up(tmp_path: Path, lock_holder: subprocess.Popen[str]) -> None:
    build_sample_store(tmp_path / "store")
    config = write_config(tmp_path, str(tmp_path / "store"))

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--date", "2026-12-03",
                                       "--wait", "1"])

    assert result.exit_code == 1
    assert ("was still locked after waiting 1 s; wait for that run to finish or pass a longer "
            "--wait" in " ".join(result.stderr.split()))
    assert not (tmp_path / "reports" / "2026-12-03").exists()


class _WaitingSeen(logging.Handler):
    """Ends the lock holder once the run logs that it waits for the lock."""

    def __init__(self, holder: subprocess.Popen[str]) -> None:
        super().__init__(logging.INFO)
        self.holder = holder
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("waiting up to 600 s for ") and not self.seen:
            self.seen = True
            self.holder.kill()


def test_nightly_wait_gets_lock(tmp_path: Path, lock_holder: subprocess.Popen[str]) -> None:
    build_sample_store(tmp_path / "store")
    config = write_config(tmp_path, str(tmp_path / "store"))
    handler = _WaitingSeen(lock_holder)
    logging.getLogger("clicktrail.reporter.nightly").addHandler(handler)
    try:
        result = CliRunner().invoke(main, ["nightly", "--config", str(config),
                                           "--date", "2026-12-03", "--wait", "600"])
    finally:
        logging.getLogger("clicktrail.reporter.nightly").removeHandler(handler)

    assert handler.seen
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "2026-12-03" / "delivery-d1.pdf").is_file()


def test_nightly_logs_each_delivery(tmp_path: Path) -> None:
    # CliRunner's stderr is not a terminal: one log line per delivery, no progress bar.
    build_sample_store(tmp_path / "store")
    config = write_config(tmp_path, str(tmp_path / "store"))

    result = CliRunner().invoke(main, ["nightly", "--config", str(config), "--date", "2026-12-03"])

    assert result.exit_code == 0, result.output
    assert "rendered delivery 'd1' (2 of 3)" in result.stderr
    assert "Rendering 2026-12-03" not in result.stderr


def test_nightly_progress_bar_on_terminal(tmp_path: Path) -> None:
    build_sample_store(tmp_path / "store")
    config = write_config(tmp_path, str(tmp_path / "store"))
    command = [str(Path(sys.executable).parent / "clicktrail-report"), "nightly",
               "--config", str(config), "--date", "2026-12-03"]

    # stderr is a pseudo-terminal, as in an interactive shell.
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=terminal)
    finally:
        os.close(terminal)
    try:
        shown = _read_until_closed(controller, max_wait_s=300)
        stdout, _ = process.communicate(timeout=60)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)

    assert process.returncode == 0, shown
    assert stdout.decode().strip() == str(tmp_path / "reports" / "2026-12-03" / "index.html")
    assert "Rendering 2026-12-03" in shown
    assert "3/3" in shown
    assert "rendered delivery" not in shown


def _read_until_closed(controller: int, max_wait_s: float) -> str:
    # Reads the terminal's output until the child closes it; EIO on Linux means closed.
    chunks = []
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")
