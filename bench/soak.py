"""Soak run: the agent started as systemd starts it, under minutes of rotating traffic.

Reads ExecStart from systemd/clicktrail-agent.service, points it at this checkout's
clicktrail-agent and a config in a scratch folder, and runs it with NOTIFY_SOCKET and
WATCHDOG_USEC set, as systemd would. A writer appends numbered access-log lines and rotates the
log by rename and by copytruncate (compressing older copies) the whole time; with --kills N the
agent is also killed with SIGKILL N times at random moments and restarted. At the end the agent
gets SIGTERM, and the store must hold every line exactly once.

    .venv/bin/python bench/soak.py --minutes 5 --kills 0
    .venv/bin/python bench/soak.py --minutes 5 --kills 200
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.notify_socket import NotifySocket  # noqa: E402
from tests.numbered import stored_numbers, write_config  # noqa: E402
from tests.test_crash import Writer  # noqa: E402


def exec_start(unit: Path, config: Path) -> list[str]:
    """Return the unit's ExecStart command with this checkout's binary and the given config."""
    for line in unit.read_text().splitlines():
        if line.startswith("ExecStart="):
            command = shlex.split(line.removeprefix("ExecStart="))
            break
    else:
        raise SystemExit(f"{unit}: no ExecStart= line")
    command[0] = str(Path(sys.executable).parent / Path(command[0]).name)
    return [str(config) if arg == "/etc/clicktrail/clicktrail.toml" else arg for arg in command]


def start(command: list[str], notify: NotifySocket, log_file) -> subprocess.Popen:
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="30000000")
    return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--kills", type=int, default=0)
    parser.add_argument("--seed", type=int, default=20261204)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="clicktrail-soak-"))
    config = write_config(workdir, flush_interval_s=1.0, rescan_interval_s=2.0)
    command = exec_start(REPO / "systemd" / "clicktrail-agent.service", config)
    log = workdir / "logs" / "t.log"
    log.touch()
    notify = NotifySocket(workdir / "notify.sock")
    # About one rotation every few seconds: many more copies than a day of logrotate makes.
    writer = Writer(log, rng, rotate_probability=0.004)
    agent_log = open(workdir / "agent.log", "ab")  # noqa: SIM115 (shared by every start)
    print(f"workdir {workdir}\ncommand {shlex.join(command)}")

    started = time.monotonic()
    agent = start(command, notify, agent_log)
    notify.wait_for("READY=1", timeout=60)
    writer.start()
    deadline = started + args.minutes * 60
    kill_times = sorted(rng.uniform(started, deadline) for _ in range(args.kills))
    for kill_at in kill_times:
        notify.drain(max(0.0, kill_at - time.monotonic()))
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        agent = start(command, notify, agent_log)
        notify.wait_for("READY=1", timeout=60)
    notify.drain(max(0.0, deadline - time.monotonic()))
    writer.stop.set()
    writer.join()

    expected = writer.next_number
    catch_up = time.monotonic() + 120
    while len(stored_numbers(workdir / "store")) < expected and time.monotonic() < catch_up:
        notify.drain(1.0)
    agent.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1", timeout=30)
    status = agent.wait(timeout=60)
    agent_log.close()

    numbers = stored_numbers(workdir / "store")
    exactly_once = numbers == list(range(expected))
    print(f"minutes {args.minutes}, kills {args.kills}, lines {expected}, rotations "
          f"{writer.rotations}, stored {len(numbers)}, exit status {status}, "
          f"every line exactly once: {exactly_once}")
    sys.exit(0 if exactly_once and status == 0 else 1)


if __name__ == "__main__":
    main()
