"""Exactly once under SIGKILL: numbered lines stream through rotations of every kind while the
daemon is killed at random moments and restarted; the store must hold every line once.

CLICKTRAIL_CRASH_KILLS sets the number of kills (default 50); docs/durability.md records a
longer run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .notify_socket import NotifySocket
from .numbered import append, rotate_copytruncate, rotate_rename, stored_numbers, write_config

KILLS = int(os.environ.get("CLICKTRAIL_CRASH_KILLS", "50"))
SEED = int(os.environ.get("CLICKTRAIL_CRASH_SEED", "20261204"))


class Writer(threading.Thread):
    """Appends numbered lines and rotates the log by rename or copytruncate, then compresses.

    The writer rotates between its own writes, as a web server's logrotate does between two
    requests; the one loss logrotate itself can cause (a line written between its copy and its
    truncate) is outside what any reader can recover.
    """

    def __init__(self, log: Path, rng: random.Random, rotate_probability: float = 0.08):
        super().__init__(daemon=True)
        self.log = log
        self.rng = rng
        self.rotate_probability = rotate_probability
        self.next_number = 0
        self.rotations = {"rename": 0, "copytruncate": 0}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            count = self.rng.randint(1, 40)
            append(self.log, range(self.next_number, self.next_number + count))
            self.next_number += count
            if self.rng.random() < self.rotate_probability:
                kind = self.rng.choice(["rename", "copytruncate"])
                (rotate_rename if kind == "rename" else rotate_copytruncate)(self.log)
                self.rotations[kind] += 1
            time.sleep(self.rng.uniform(0.0, 0.02))


def start_agent(config: Path, log_file, notify_path: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "clicktrail.agent.cli", "-v", "run", "--config", str(config)]
    env = dict(os.environ)
    if notify_path is not None:
        env["NOTIFY_SOCKET"] = str(notify_path)
    return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
def test_sigkill_during_rotations_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random(SEED)
    config = write_config(tmp_path, flush_interval_s=0.2, rescan_interval_s=0.2,
                          max_batch_bytes=65536)
    log = tmp_path / "logs" / "t.log"
    log.touch()
    writer = Writer(log, rng)
    writer.start()

    agent_log = open(tmp_path / "agent.log", "ab")  # noqa: SIM115 (shared by every run)
    agent = None
    try:
        for _ in range(KILLS):
            agent = start_agent(config, agent_log)
            time.sleep(rng.uniform(0.3, 1.6))
            agent.send_signal(signal.SIGKILL)
            agent.wait(timeout=10)
        writer.stop.set()
        writer.join(timeout=10)

        # A last run that is allowed to finish, then a clean stop once it is ready (a SIGTERM
        # during start-up would meet Python's default handler).
        notify = NotifySocket(tmp_path / "notify.sock")
        agent = start_agent(config, agent_log, notify.path)
        notify.wait_for("READY=1", timeout=60)
        notify.close()
        deadline = time.monotonic() + 120
        expected = list(range(writer.next_number))
        while time.monotonic() < deadline and len(stored_numbers(tmp_path / "store")) < len(expected):
            time.sleep(0.5)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        # A failed check must not leave the last agent running after the test.
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        agent_log.close()

    assert writer.rotations["rename"] > 0
    assert writer.rotations["copytruncate"] > 0
    assert stored_numbers(tmp_path / "store") == expected
