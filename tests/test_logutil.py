"""Daemon logging: the journald format, its detection, and rate-limited repeats."""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clicktrail.agent import logutil
from clicktrail.agent.logutil import JournalFormatter, RateLimitedLogger, setup_logging


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger's handlers and level that setup_logging changes."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def make_record(level: int, msg: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("clicktrail.agent.tailer", level, __file__, 1, msg, args, exc_info)


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        pytest.param(logging.DEBUG, "<7>", id="debug"),
        pytest.param(logging.INFO, "<6>", id="info"),
        pytest.param(logging.WARNING, "<4>", id="warning"),
        pytest.param(logging.ERROR, "<3>", id="error"),
        pytest.param(logging.CRITICAL, "<2>", id="critical"),
    ],
)
def test_journal_format_priority_prefix(level: int, prefix: str) -> None:
    text = JournalFormatter().format(make_record(level, "source %s: opened %s", "mta", "mail.log"))
    assert text == f"{prefix}clicktrail.agent.tailer: source mta: opened mail.log"


def test_journal_format_prefixes_every_line() -> None:
    try:
        raise OSError("disk full")
    except OSError:
        record = make_record(logging.ERROR, "sealing batch failed", exc_info=sys.exc_info())
    lines = JournalFormatter().format(record).split("\n")

    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>OSError: disk full"


def test_stream_is_journal_matches_device_and_inode(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "journal", "w") as stream, open(tmp_path / "other", "w") as other:
        stat = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")

        assert logutil.stream_is_journal(stream) is True
        assert logutil.stream_is_journal(other) is False
        assert logutil.stream_is_journal(io.StringIO()) is False


@pytest.mark.parametrize("value", [None, "", "12", "a:b", "12:"])
def test_stream_is_journal_invalid_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    else:
        monkeypatch.setenv("JOURNAL_STREAM", value)
    with open(tmp_path / "stderr", "w") as stream:
        assert logutil.stream_is_journal(stream) is False


def test_setup_logging_detects_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       root_logging: None) -> None:
    with open(tmp_path / "stderr", "w+") as stream:
        stat = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        setup_logging(logging.INFO, stream=stream)

        logging.getLogger("clicktrail.agent.daemon").warning("spool is full (%d bytes)", 1024)
        logging.getLogger("clicktrail.agent.daemon").debug("not shown")
        stream.seek(0)
        assert stream.read() == "<4>clicktrail.agent.daemon: spool is full (1024 bytes)\n"


def test_setup_logging_plain_has_timestamp(root_logging: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    setup_logging(logging.DEBUG, stream=stream)

    logging.getLogger("clicktrail.agent.daemon").debug("poll")
    line = stream.getvalue().rstrip("\n")

    # "2026-12-04 10:00:00,123 DEBUG clicktrail.agent.daemon: poll"
    assert line.endswith(" DEBUG clicktrail.agent.daemon: poll")
    assert line[:4].isdigit()
    assert line[4] == "-"


def test_setup_logging_twice_keeps_one_handler(root_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging(logging.INFO, stream=first, journal=True)
    setup_logging(logging.INFO, stream=second, journal=True)

    logging.getLogger("clicktrail.agent.daemon").info("reloaded")
    assert first.getvalue() == ""
    assert second.getvalue() == "<6>clicktrail.agent.daemon: reloaded\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limited(clock: Clock) -> RateLimitedLogger:
    logger = logging.getLogger("clicktrail.test.ratelimit")
    logger.setLevel(logging.DEBUG)
    return RateLimitedLogger(logger, interval_s=60.0, clock=clock)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "clicktrail.test.ratelimit"]


TEMPLATE = "source %s: rejected line at offset %d: %s"


def test_repeat_within_interval_is_suppressed(limited: RateLimitedLogger, clock: Clock,
                                              caplog: pytest.LogCaptureFixture) -> None:
    logged = []
    for offset in range(5):
        clock.now += 1
        logged.append(limited.warning(("tracking", "bad request"), TEMPLATE, "tracking",
                                      offset * 100, "bad request"))

    assert logged == [True, False, False, False, False]
    assert messages(caplog) == ["source tracking: rejected line at offset 0: bad request"]


def test_repeat_after_interval_carries_count(limited: RateLimitedLogger, clock: Clock,
                                             caplog: pytest.LogCaptureFixture) -> None:
    key = ("tracking", "bad request")
    limited.warning(key, TEMPLATE, "tracking", 0, "bad request")
    for offset in (100, 200, 300):
        clock.now += 10
        limited.warning(key, TEMPLATE, "tracking", offset, "bad request")
    clock.now += 40
    limited.warning(key, TEMPLATE, "tracking", 400, "bad request")

    assert messages(caplog) == [
        "source tracking: rejected line at offset 0: bad request",
        "source tracking: rejected line at offset 400: bad request "
        "(3 similar messages suppressed in the last 70 s)",
    ]


def test_different_keys_are_limited_apart(limited: RateLimitedLogger,
                                          caplog: pytest.LogCaptureFixture) -> None:
    limited.warning(("tracking", "bad request"), TEMPLATE, "tracking", 0, "bad request")
    limited.warning(("tracking", "bad time"), TEMPLATE, "tracking", 10, "bad time")
    limited.warning(("mta", "bad request"), TEMPLATE, "mta", 0, "bad request")
    limited.error(("tracking", "bad request"), TEMPLATE, "tracking", 20, "bad request")

    assert len(messages(caplog)) == 4


def test_flush_logs_closed_windows(limited: RateLimitedLogger, clock: Clock,
                                   caplog: pytest.LogCaptureFixture) -> None:
    key = ("tracking", "bad request")
    limited.warning(key, TEMPLATE, "tracking", 0, "bad request")
    clock.now += 5
    limited.warning(key, TEMPLATE, "tracking", 100, "bad request")
    clock.now += 5
    limited.warning(key, TEMPLATE, "tracking", 200, "bad request")

    assert limited.flush() == 0
    clock.now += 60
    assert limited.flush() == 1
    assert limited.flush() == 0

    assert messages(caplog)[-1] == ("source tracking: rejected line at offset 200: bad request "
                                    "(2 similar messages suppressed in the last 70 s)")
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]


def test_flush_force_logs_open_windows(limited: RateLimitedLogger, clock: Clock,
                                       caplog: pytest.LogCaptureFixture) -> None:
    limited.warning("k", "store %s: upload failed", "s3://b")
    clock.now += 1
    limited.warning("k", "store %s: upload failed", "s3://b")
    limited.warning("j", "only once")

    assert limited.flush(force=True) == 1
    assert messages(caplog) == [
        "store s3://b: upload failed",
        "only once",
        "store s3://b: upload failed (1 similar messages suppressed in the last 1 s)",
    ]


def test_max_keys_evicts_oldest_with_count(clock: Clock,
                                           caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("clicktrail.test.ratelimit")
    limited = RateLimitedLogger(logger, interval_s=60.0, max_keys=2, clock=clock)
    limited.warning(1, "file %d unreadable", 1)
    limited.warning(1, "file %d unreadable", 1)
    limited.warning(2, "file %d unreadable", 2)
    limited.warning(3, "file %d unreadable", 3)

    assert messages(caplog) == [
        "file 1 unreadable",
        "file 2 unreadable",
        "file 1 unreadable (1 similar messages suppressed in the last 0 s)",
        "file 3 unreadable",
    ]


def test_disabled_level_is_not_counted(limited: RateLimitedLogger,
                                       caplog: pytest.LogCaptureFixture) -> None:
    limited.logger.setLevel(logging.ERROR)
    assert limited.warning("k", "ignored") is False
    limited.logger.setLevel(logging.DEBUG)
    assert limited.warning("k", "shown") is True
    assert messages(caplog) == ["shown"]


def test_record_points_at_caller(limited: RateLimitedLogger,
                                 caplog: pytest.LogCaptureFixture) -> None:
    limited.warning("k", "from the test")
    limited.log(logging.ERROR, "k", "from the test")

    assert [r.funcName for r in caplog.records] == ["test_record_points_at_caller"] * 2
    assert {r.pathname for r in caplog.records} == {__file__}


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="expected a positive number of seconds, got 0"):
        RateLimitedLogger(logging.getLogger("x"), interval_s=0)
