"""The sd_notify client against real AF_UNIX datagram sockets, by path and abstract name."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clicktrail.agent import notify


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(notify, "_warned_addresses", set())


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2.0)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound to a file in tmp_path, named by $NOTIFY_SOCKET."""
    path = str(tmp_path / "notify.sock")
    sock = _receiver(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket in the Linux abstract namespace, named "@…" in $NOTIFY_SOCKET."""
    name = f"clicktrail-test-{os.getpid()}-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


HELPER_CASES = [
    pytest.param(notify.ready, (), b"READY=1", id="ready"),
    pytest.param(notify.stopping, (), b"STOPPING=1", id="stopping"),
    pytest.param(notify.watchdog, (), b"WATCHDOG=1", id="watchdog"),
    pytest.param(notify.status, ("reading 2 sources",), b"STATUS=reading 2 sources", id="status"),
    pytest.param(notify.status, ("line one\nline two",), b"STATUS=line one line two",
                 id="status-multiline"),
    pytest.param(notify.extend_timeout, (20_000_000,), b"EXTEND_TIMEOUT_USEC=20000000",
                 id="extend-timeout"),
]


@pytest.mark.parametrize(("helper", "args", "expected"), HELPER_CASES)
def test_helper_sends_datagram_on_path(path_socket: socket.socket, helper, args, expected) -> None:
    assert helper(*args) is True
    assert path_socket.recv(4096) == expected


@pytest.mark.parametrize(("helper", "args", "expected"), HELPER_CASES)
def test_helper_sends_datagram_abstract(abstract_socket: socket.socket, helper, args,
                                        expected) -> None:
    assert helper(*args) is True
    assert abstract_socket.recv(4096) == expected


def test_notify_sends_state_verbatim(path_socket: socket.socket) -> None:
    assert notify.notify("READY=1\nSTATUS=started") is True
    assert path_socket.recv(4096) == b"READY=1\nSTATUS=started"


def test_reloading_sends_monotonic_time(path_socket: socket.socket) -> None:
    before_us = notify.time.clock_gettime_ns(notify.time.CLOCK_MONOTONIC) // 1000
    assert notify.reloading() is True
    first, second = path_socket.recv(4096).decode().split("\n")
    after_us = notify.time.clock_gettime_ns(notify.time.CLOCK_MONOTONIC) // 1000

    assert first == "RELOADING=1"
    name, _, value = second.partition("=")
    assert name == "MONOTONIC_USEC"
    assert before_us <= int(value) <= after_us


def test_notify_without_socket_returns_false(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="clicktrail.agent.notify"):
        assert notify.ready() is False
    assert caplog.records == []


def test_missing_socket_warns_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    missing = str(tmp_path / "gone.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", missing)

    with caplog.at_level(logging.WARNING, logger="clicktrail.agent.notify"):
        results = [notify.watchdog() for _ in range(3)]

    assert results == [False, False, False]
    assert len(caplog.records) == 1
    assert caplog.records[0].levelno == logging.WARNING
    assert missing in caplog.records[0].getMessage()


def test_socket_that_is_not_datagram_fails_quietly(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "stream.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    monkeypatch.setenv("NOTIFY_SOCKET", path)

    try:
        with caplog.at_level(logging.WARNING, logger="clicktrail.agent.notify"):
            assert notify.ready() is False
            assert notify.ready() is False
    finally:
        server.close()
    assert len(caplog.records) == 1


def test_unsupported_address_fails_quietly(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with caplog.at_level(logging.WARNING, logger="clicktrail.agent.notify"):
        assert notify.ready() is False
    assert "unsupported address" in caplog.text


def test_extend_timeout_rejects_zero() -> None:
    with pytest.raises(ValueError, match="expected a positive number of microseconds, got 0"):
        notify.extend_timeout(0)


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        pytest.param("30000000", None, 30.0, id="no-pid"),
        pytest.param("30000000", "self", 30.0, id="our-pid"),
        pytest.param("30000000", "1", None, id="other-pid"),
        pytest.param(None, None, None, id="unset"),
        pytest.param("0", None, None, id="zero"),
        pytest.param("thirty", None, None, id="not-a-number"),
    ],
)
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec, pid, expected) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert notify.watchdog_interval_s() == expected


def test_pinger_sends_once_per_quarter_interval(path_socket: socket.socket) -> None:
    now = [100.0]
    pinger = notify.WatchdogPinger(interval_s=30.0, clock=lambda: now[0])

    sent = []
    for step in range(12):
        now[0] = 100.0 + step * 2.5
        sent.append(pinger.ping())

    # Pings at 0, 7.5, 15 and 22.5 s: one per quarter of the 30 s interval.
    assert sent == [True, False, False, True, False, False, True, False, False, True, False, False]
    assert pinger.max_wait_s == 15.0
    path_socket.setblocking(False)
    datagrams = []
    while True:
        try:
            datagrams.append(path_socket.recv(4096))
        except BlockingIOError:
            break
    assert datagrams == [b"WATCHDOG=1"] * 4


def test_pinger_disabled_without_watchdog() -> None:
    pinger = notify.WatchdogPinger()
    assert pinger.enabled is False
    assert pinger.max_wait_s is None
    assert pinger.ping() is False
