"""Hostile files in a log folder: decompression bombs, symlinks swapped in place of a log, FIFOs.

A user who can write to a log folder can put any file there. The agent must not read files
outside the source's globs through a symlink, must not decompress without bound, and must not
block on a FIFO; in every case it goes on reading the other files.
"""

from __future__ import annotations

import gzip
import logging
import os
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard
from click.testing import CliRunner
from clicktrail.agent import tailer
from clicktrail.agent.cli import main as agent_main

from .numbered import append, line, stored_numbers, write_config
from .test_security_optout import agent_status, run_once

MIB = 1024 * 1024
SECRET_MARKER = "s3cr3t-marker-7f3a"
# A line the access-log parser would turn into an event (recipient 4242), and one it rejects.
SECRET_TEXT = (line(4242).decode().replace('"t"', f'"{SECRET_MARKER}"')
               + f"root:{SECRET_MARKER}:19700:0:99999:7:::\n")


def numbered(numbers) -> bytes:
    return b"".join(line(n) for n in numbers)


def counters(config: Path) -> dict[str, int]:
    report, _ = agent_status(config)
    return report["counters"].get("tracking", {})


def stored_text(root: Path) -> str:
    """Return every value of every Parquet file under root (store or spool) as one text."""
    tables = [pq.ParquetFile(path).read() for path in sorted(root.rglob("*.parquet"))]
    return "\n".join(str(table.to_pylist()) for table in tables)


# --- decompression bombs ------------------------------------------------------------------------

def gzip_bomb(zeros: int) -> bytes:
    """Lines 1-10, then `zeros` NUL bytes, then lines 11-12, compressed with gzip."""
    return gzip.compress(numbered(range(1, 11)) + bytes(zeros) + numbered([11, 12]),
                         compresslevel=9)


def zstd_bomb(zeros: int) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(
        numbered(range(1, 11)) + bytes(zeros) + numbered([11, 12]))


def test_bomb_stopped_at_max_decompressed_bytes(tmp_path, caplog):
    config = write_config(tmp_path)
    config.write_text(config.read_text() + "max_decompressed_bytes = 1048576\n")
    logs = tmp_path / "logs"
    bomb = gzip_bomb(8 * MIB)
    assert len(bomb) < 16 * 1024
    (logs / "t.log.2.gz").write_bytes(bomb)
    append(logs / "t.log", range(20, 26))

    with caplog.at_level(logging.WARNING):
        run_once(config)

    # The lines before the limit are kept, those after it are never read, and the live file
    # is read as usual.
    assert stored_numbers(tmp_path / "store") == [*range(1, 11), *range(20, 26)]
    assert counters(config)["compressed_files_stopped"] == 1
    warnings = [r.getMessage() for r in caplog.records if "max_decompressed_bytes" in r.getMessage()]
    assert len(warnings) == 1
    assert str(logs / "t.log.2.gz") in warnings[0]
    assert "(1048576)" in warnings[0]


@pytest.mark.parametrize(("name", "build"), [("t.log.2.gz", gzip_bomb), ("t.log.2.zst", zstd_bomb)])
def test_bomb_stopped_at_default_ratio(tmp_path, caplog, name, build):
    config = write_config(tmp_path)
    logs = tmp_path / "logs"
    # 80 MiB of zeros compress more than 500 times, real logs 12 to 20 times.
    bomb = build(80 * MIB)
    assert len(bomb) < 160 * 1024
    (logs / name).write_bytes(bomb)
    append(logs / "t.log", range(20, 23))

    with caplog.at_level(logging.WARNING):
        run_once(config)
        run_once(config)

    assert stored_numbers(tmp_path / "store") == [*range(1, 11), 20, 21, 22]
    assert counters(config)["compressed_files_stopped"] == 1
    warnings = [r.getMessage() for r in caplog.records if "max_compression_ratio" in r.getMessage()]
    assert len(warnings) == 1
    assert str(logs / name) in warnings[0]


def test_compressed_log_below_limits_read_whole(tmp_path):
    config = write_config(tmp_path)
    config.write_text(config.read_text() + "max_decompressed_bytes = 1048576\n")
    # Exactly at the limit: 1 MiB of numbered lines padded by one line of spaces.
    body = numbered(range(1, 101))
    body += b" " * (MIB - len(body) - 1) + b"\n"
    assert len(body) == MIB
    (tmp_path / "logs" / "t.log.2.gz").write_bytes(gzip.compress(body))

    run_once(config)

    assert stored_numbers(tmp_path / "store") == list(range(1, 101))
    assert "compressed_files_stopped" not in counters(config)


def test_limits_outside_range_rejected(tmp_path):
    config = write_config(tmp_path)
    config.write_text(config.read_text() + "max_compression_ratio = 1\n")

    result = CliRunner().invoke(agent_main, ["check-config", "--config", str(config)])

    assert result.exit_code == 78
    assert "sources[0].max_compression_ratio: value 1 out of range" in result.output


# --- symlinks and other files swapped in place of a log ----------------------------------------

def secret_file(tmp_path: Path) -> Path:
    """A file outside the log folder that the agent can read, as /etc/shadow would be to adm."""
    folder = tmp_path / "private"
    folder.mkdir()
    secret = folder / "shadow"
    secret.write_text(SECRET_TEXT)
    return secret


def assert_secret_not_stored(tmp_path: Path) -> None:
    store_text = stored_text(tmp_path / "store")
    spool_text = stored_text(tmp_path / "state")
    assert store_text, "the store holds no file at all"
    assert SECRET_MARKER not in store_text
    assert SECRET_MARKER not in spool_text
    assert "4242" not in str(stored_numbers(tmp_path / "store"))


def test_live_log_swapped_for_symlink(tmp_path, caplog):
    config = write_config(tmp_path)
    log = tmp_path / "logs" / "t.log"
    append(log, range(1, 6))
    run_once(config)
    secret = secret_file(tmp_path)

    log.unlink()
    log.symlink_to(secret)
    with caplog.at_level(logging.WARNING):
        run_once(config)

    assert stored_numbers(tmp_path / "store") == [1, 2, 3, 4, 5]
    assert_secret_not_stored(tmp_path)
    rejected = [r.getMessage() for r in caplog.records if "is a symlink to" in r.getMessage()]
    assert rejected
    assert str(log) in rejected[0]
    assert str(secret) in rejected[0]


@pytest.mark.parametrize("name", ["t.log.1", "t.log.2.gz"])
def test_new_rotated_name_symlink_rejected(tmp_path, name):
    config = write_config(tmp_path)
    append(tmp_path / "logs" / "t.log", range(1, 4))
    secret = secret_file(tmp_path)
    if name.endswith(".gz"):
        compressed = tmp_path / "private" / "shadow.gz"
        compressed.write_bytes(gzip.compress(secret.read_bytes()))
        secret = compressed
    (tmp_path / "logs" / name).symlink_to(secret)

    run_once(config)

    assert stored_numbers(tmp_path / "store") == [1, 2, 3]
    assert_secret_not_stored(tmp_path)


def test_symlink_inside_globs_followed(tmp_path):
    # Apache's rotatelogs -L keeps the live name as a symlink to the current dated file.
    config = write_config(tmp_path)
    logs = tmp_path / "logs"
    append(logs / "t.log.20261204", range(1, 6))
    (logs / "t.log").symlink_to(logs / "t.log.20261204")

    run_once(config)

    assert stored_numbers(tmp_path / "store") == [1, 2, 3, 4, 5]


def test_matches_globs_does_not_cross_folders(tmp_path):
    patterns = (str(tmp_path / "logs" / "t.log*"),)

    assert tailer.matches_globs(str(tmp_path / "logs" / "t.log.1"), patterns)
    assert not tailer.matches_globs(str(tmp_path / "logs" / "sub" / "t.log.1"), patterns)
    assert not tailer.matches_globs(str(tmp_path / "logs" / "x.log"), patterns)
    assert not tailer.matches_globs("/etc/shadow", patterns)


def test_fifo_not_opened_for_reading(tmp_path):
    fifo = tmp_path / "t.log"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def try_open() -> None:
        try:
            tailer.open_log(str(fifo)).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    opener = threading.Thread(target=try_open, daemon=True)
    opener.start()
    opener.join(30)
    if opener.is_alive():
        # Without O_NONBLOCK the open waits for a writer: release it, then fail.
        with open(fifo, "wb"):
            pass
        opener.join(30)
        pytest.fail("open_log blocked on a FIFO")

    assert isinstance(outcome[0], tailer.UnsafeFile)
    assert "not a regular file" in str(outcome[0])
