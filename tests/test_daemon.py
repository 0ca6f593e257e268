"""`clicktrail-agent run` as systemd runs it: the notify protocol on a socket the test opens,
SIGTERM and SIGHUP, exit status 78 on a bad config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .notify_socket import NotifySocket
from .numbered import append, stored_numbers, write_config


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def start(config: Path, notify: NotifySocket, log_path: Path, **env: str) -> subprocess.Popen:
    environment = dict(os.environ, NOTIFY_SOCKET=str(notify.path), **env)
    command = [sys.executable, "-m", "clicktrail.agent.cli", "-v", "run", "--config", str(config)]
    with log_path.open("ab") as log_file:
        return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=environment)


def wait_for_numbers(store: Path, count: int, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    numbers = stored_numbers(store)
    while len(numbers) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        numbers = stored_numbers(store)
    return numbers


def test_ready_watchdog_stopping_and_sigterm_seals(tmp_path, notify_socket):
    # A long flush interval: only SIGTERM can seal the second batch in time.
    config = write_config(tmp_path, flush_interval_s=600.0, rescan_interval_s=0.2)
    log = tmp_path / "logs" / "t.log"
    append(log, range(0, 10))
    agent = start(config, notify_socket, tmp_path / "agent.log", WATCHDOG_USEC="1000000")
    try:
        messages = notify_socket.wait_for("READY=1")
        notify_socket.wait_for("WATCHDOG=1", timeout=5)
        append(log, range(10, 25))
        time.sleep(0.5)
        agent.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1")
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    assert messages[0].splitlines()[0] == "READY=1"
    assert stored_numbers(tmp_path / "store") == list(range(25))


def test_sighup_keeps_running_config_when_new_one_is_bad(tmp_path, notify_socket):
    config = write_config(tmp_path, flush_interval_s=0.2, rescan_interval_s=0.2)
    log = tmp_path / "logs" / "t.log"
    append(log, range(0, 5))
    agent_log = tmp_path / "agent.log"
    agent = start(config, notify_socket, agent_log)
    try:
        notify_socket.wait_for("READY=1")
        assert wait_for_numbers(tmp_path / "store", 5) == list(range(5))

        good = config.read_text()
        config.write_text(good.replace('kind = "access_log"', 'kind = "sendmail"'))
        agent.send_signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING=1")
        notify_socket.wait_for("READY=1")
        append(log, range(5, 10))
        assert wait_for_numbers(tmp_path / "store", 10) == list(range(10))

        config.write_text(good)
        agent.send_signal(signal.SIGHUP)
        notify_socket.wait_for("READY=1")
        append(log, range(10, 15))
        assert wait_for_numbers(tmp_path / "store", 15) == list(range(15))
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    output = agent_log.read_text()
    assert "reload failed, keeping the running config" in output
    assert "sources[0].kind: invalid value 'sendmail'" in output
    assert "config reloaded: 1 source(s)" in output


def test_bad_config_at_start_exits_78(tmp_path, notify_socket):
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace('routes = "generic"', 'routes = "nope"'))
    agent = start(config, notify_socket, tmp_path / "agent.log")

    assert agent.wait(timeout=30) == 78
    assert "sources[0].routes: unknown preset 'nope'" in (tmp_path / "agent.log").read_text()
