"""Logging of the daemon: stderr in a format journald understands, and rate-limited repeats.

Under systemd, stderr is a stream into journald, which stamps each line with the time and reads
a leading `<N>` as the line's syslog priority (SyslogLevelPrefix=yes, the default), so that
`journalctl -p warning` filters by level. Elsewhere, each line carries its own timestamp.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

# syslog(3) priorities of Python's levels.
SYSLOG_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
SYSLOG_DEBUG = 7

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"
# Appended to a rate-limited message with the count of repeats not logged and the window's age.
SUPPRESSED_SUFFIX = " (%d similar messages suppressed in the last %.0f s)"


def syslog_priority(levelno: int) -> int:
    for level, priority in SYSLOG_PRIORITIES:
        if levelno >= level:
            return priority
    return SYSLOG_DEBUG


class JournalFormatter(logging.Formatter):
    """Format records without a timestamp and prefix every line with `<priority>`.

    journald stores each line of a multi-line message (a traceback) as its own entry, so each
    line needs the prefix to keep the record's level.
    """

    def __init__(self, fmt: str = JOURNAL_FORMAT):
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = super().format(record)
        return "\n".join(prefix + line for line in text.split("\n"))


def stream_is_journal(stream: TextIO) -> bool:
    """Return whether stream is the journald stream that systemd connected.

    systemd sets $JOURNAL_STREAM to "device:inode" of that stream (systemd.exec(5)); comparing
    it with the stream's own stat tells whether stderr was redirected since.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False

    try:
        stat = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


def setup_logging(level: int = logging.INFO, stream: TextIO | None = None,
                  journal: bool | None = None) -> logging.Handler:
    """Send the root logger's records at level and above to stream (default: stderr).

    journal selects the journald format; None detects it from $JOURNAL_STREAM. Calling it again
    (after a reload) replaces the handler an earlier call added and leaves other handlers alone.
    """
    if stream is None:
        stream = sys.stderr
    if journal is None:
        journal = stream_is_journal(stream)

    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if journal else logging.Formatter(PLAIN_FORMAT))
    handler._clicktrail = True  # type: ignore[attr-defined]

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_clicktrail", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    return handler


@dataclass
class _Window:
    start: float
    suppressed: int = 0
    last_args: tuple[Any, ...] = ()


class RateLimitedLogger:
    """Log a message of one template and key at most once per interval_s, counting the rest.

    The first message of a (level, template, key) opens a window of interval_s seconds; repeats
    inside it are counted and not logged. The first repeat after the window closes is logged
    with the count appended, "(N similar messages suppressed in the last S s)". For a window that
    closed with no later repeat, flush() logs the last suppressed message with that count, so
    the daemon loop calls flush() now and then, and flush(force=True) at shutdown.

    key separates what must not be merged: a rejected line is keyed by (source, reason) so that
    a new kind of error still shows at once. Only positional %-arguments are supported.
    At most max_keys windows are kept; beyond that the oldest is flushed and dropped.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0, max_keys: int = 1024,
                 clock: Callable[[], float] = time.monotonic):
        if interval_s <= 0:
            raise ValueError(f"interval_s: expected a positive number of seconds, got {interval_s}")
        self.logger = logger
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._clock = clock
        self._windows: dict[tuple[int, str, Any], _Window] = {}
        self._lock = threading.Lock()

    def warning(self, key: Any, msg: str, *args: Any, **kwargs: Any) -> bool:
        return self._log(logging.WARNING, key, msg, args, kwargs)

    def error(self, key: Any, msg: str, *args: Any, **kwargs: Any) -> bool:
        return self._log(logging.ERROR, key, msg, args, kwargs)

    def log(self, level: int, key: Any, msg: str, *args: Any, **kwargs: Any) -> bool:
        """Log msg % args unless a window of (level, msg, key) is open; return whether logged."""
        return self._log(level, key, msg, args, kwargs)

    def _log(self, level: int, key: Any, msg: str, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> bool:
        if not self.logger.isEnabledFor(level):
            return False

        window_key = (level, msg, key)
        now = self._clock()
        with self._lock:
            window = self._windows.get(window_key)
            if window is not None and now - window.start < self.interval_s:
                window.suppressed += 1
                window.last_args = args
                return False
            suppressed = window.suppressed if window else 0
            elapsed = now - window.start if window else 0.0
            self._windows.pop(window_key, None)
            self._windows[window_key] = _Window(start=now)
            evicted = self._evict_over_limit()

        for old_key, old_window in evicted:
            self._log_summary(old_key, old_window, now)
        # Point the record's file and line at the caller of warning(), error() or log().
        kwargs.setdefault("stacklevel", 3)
        if suppressed:
            self.logger.log(level, msg + SUPPRESSED_SUFFIX, *args, suppressed, elapsed, **kwargs)
        else:
            self.logger.log(level, msg, *args, **kwargs)
        return True

    def flush(self, force: bool = False) -> int:
        """Log the count of every closed window (every window with force); return how many."""
        now = self._clock()
        with self._lock:
            closed = [(key, window) for key, window in self._windows.items()
                      if force or now - window.start >= self.interval_s]
            for key, _ in closed:
                del self._windows[key]

        logged = 0
        for key, window in closed:
            logged += self._log_summary(key, window, now)
        return logged

    def _evict_over_limit(self) -> list[tuple[tuple[int, str, Any], _Window]]:
        evicted = []
        while len(self._windows) > self.max_keys:
            oldest = next(iter(self._windows))
            evicted.append((oldest, self._windows.pop(oldest)))
        return evicted

    def _log_summary(self, key: tuple[int, str, Any], window: _Window, now: float) -> int:
        if not window.suppressed:
            return 0
        level, msg, _ = key
        self.logger.log(level, msg + SUPPRESSED_SUFFIX, *window.last_args, window.suppressed,
                        now - window.start)
        return 1

