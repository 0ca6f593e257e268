"""The sd_notify protocol: tell systemd that the agent is ready, alive, reloading or stopping.

systemd passes the address of a datagram socket in $NOTIFY_SOCKET; each message is one
datagram of newline-separated VARIABLE=value assignments (sd_notify(3)). An address starting
with '@' is in the Linux abstract namespace, where the '@' stands for a leading NUL byte.
Outside systemd the variable is unset and every function here does nothing and returns False.

libsystemd is not required; the protocol is small enough to speak directly on a socket.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)

# A datagram send blocks when systemd's receive queue is full. The daemon loop must not hang
# on it, because a hung loop stops the watchdog pings and gets the service killed.
SEND_TIMEOUT_S = 1.0

_warned_addresses: set[str] = set()


def notify(state: str) -> bool:
    """Send state, such as "READY=1" or "STATUS=…", to systemd; return whether it was sent.

    Returns False without logging when $NOTIFY_SOCKET is unset. A missing or broken socket is
    logged once per address at WARNING and also returns False: never raising keeps a
    notification failure from stopping the agent.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False

    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        # systemd 253 added vsock: addresses for virtual machines; the agent runs on the host.
        _warn_once(address, "unsupported address, expected a path or an @abstract name")
        return False

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.sendto(state.encode("utf-8"), target)
    except OSError as exc:
        _warn_once(address, str(exc))
        return False
    return True


def _warn_once(address: str, reason: str) -> None:
    if address in _warned_addresses:
        return
    _warned_addresses.add(address)
    log.warning("cannot notify systemd on NOTIFY_SOCKET=%s: %s; further failures on this "
                "socket are not logged", address, reason)


def ready() -> bool:
    """Tell systemd that start-up is finished: state loaded, watches set."""
    return notify("READY=1")


def reloading() -> bool:
    """Tell systemd that a config reload started; send ready() when it is done or failed.

    MONOTONIC_USEC is required with RELOADING=1 since systemd 253 (Type=notify-reload) and
    ignored by older versions.
    """
    now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={now_us}")


def stopping() -> bool:
    """Tell systemd that the agent is shutting down (sent on SIGTERM)."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """Reset the systemd watchdog timer; the loop sends it while it makes progress."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """Set the one-line status that `systemctl status` shows; line breaks become spaces."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def extend_timeout(usec: int) -> bool:
    """Ask systemd for usec more microseconds to finish starting or stopping.

    Each message sets a new deadline usec from now, so a long SIGTERM flush sends it again
    before the previous extension runs out.
    """
    if usec <= 0:
        raise ValueError(f"extend_timeout: expected a positive number of microseconds, got {usec}")
    return notify(f"EXTEND_TIMEOUT_USEC={int(usec)}")


def watchdog_interval_s() -> float | None:
    """Return the watchdog timeout systemd set (WatchdogSec=), in seconds, or None.

    None when $WATCHDOG_USEC is unset or invalid, or when $WATCHDOG_PID names another process
    (the variables were inherited). Send watchdog() at least every half of this interval,
    as sd_watchdog_enabled(3) recommends.
    """
    watchdog_pid = os.environ.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid != str(os.getpid()):
        return None

    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000


class WatchdogPinger:
    """Send WATCHDOG=1 at most once per quarter watchdog interval, however often ping() runs.

    A loop that wakes every few milliseconds under load calls ping() on every round without
    sending a datagram each time. A loop that blocks at most max_wait_s between two calls
    keeps the gap between two pings under three quarters of the interval.
    """

    def __init__(self, interval_s: float | None = None, clock=time.monotonic):
        self.interval_s = watchdog_interval_s() if interval_s is None else interval_s
        self._clock = clock
        self._last_sent: float | None = None

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None and self.interval_s > 0

    @property
    def max_wait_s(self) -> float | None:
        """Maximum time the loop may block between two ping() calls, or None without a watchdog."""
        if self.interval_s is None or self.interval_s <= 0:
            return None
        return self.interval_s / 2

    def ping(self) -> bool:
        """Send WATCHDOG=1 unless one was sent in the last quarter interval; return whether sent."""
        if self.interval_s is None or self.interval_s <= 0:
            return False
        now = self._clock()
        if self._last_sent is not None and now - self._last_sent < self.interval_s / 4:
            return False
        self._last_sent = now
        return watchdog()
