"""Measure the agent's peak RSS while catching up on a backlog and while tailing a busy log.

Catching up: `clicktrail-agent once` reads a whole access log (bench/generate.py writes one),
once per --batch-mib value of [agent] max_batch_bytes. The peak RSS comes from os.wait4.

With --daemon-catch-up, `clicktrail-agent run` reads the same whole log for that many seconds
per batch size, and its VmHWM is read from /proc/PID/status twice a second.

Tailing: `clicktrail-agent run` follows a log to which this script appends the lines of the
same file at --rate lines per second for --seconds seconds. VmRSS and VmHWM of the agent are
read from /proc/PID/status twice a second, and the agent stops with SIGTERM.

Each measurement runs once per Arrow memory pool in --pools, set with ARROW_DEFAULT_MEMORY_POOL
(unset means the agent's own choice).

    .venv/bin/python bench/agent_memory.py /tmp/clicktrail-bench/access.log
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agent_throughput  # noqa: E402
from agent_throughput import loadavg, run_child  # noqa: E402

MIB = 1024 * 1024
# The throughput benchmark's config with the batch size to measure and a 2 s flush interval.
CONFIG_TEMPLATE = agent_throughput.CONFIG_TEMPLATE.replace(
    "state_dir = {state_dir}\n",
    "state_dir = {state_dir}\nmax_batch_bytes = {max_batch_bytes}\nflush_interval_s = 2.0\n")
# Upper bound of the tailing run's wait for the agent to stop after SIGTERM.
STOP_TIMEOUT_S = 60


def write_config(workdir: Path, log: Path, batch_mib: int) -> Path:
    config = workdir / "clicktrail.toml"
    config.write_text(CONFIG_TEMPLATE.format(state_dir=json.dumps(str(workdir / "state")),
                                             store=json.dumps(str(workdir / "store")),
                                             log=json.dumps(str(log)),
                                             max_batch_bytes=batch_mib * MIB))
    return config


def agent_command(config: Path, command: str) -> list[str]:
    return [sys.executable, "-m", "clicktrail.agent.cli", command, "--config", str(config)]


def pool_environment(pool: str) -> dict[str, str]:
    environment = dict(os.environ)
    environment.pop("ARROW_DEFAULT_MEMORY_POOL", None)
    if pool != "default":
        environment["ARROW_DEFAULT_MEMORY_POOL"] = pool
    return environment


def measure_catch_up(log: Path, scratch: Path, batch_mib: int, pool: str) -> dict[str, object]:
    """Run `clicktrail-agent once` over the whole log; return its time and peak RSS."""
    before = loadavg()
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        config = write_config(Path(folder), log, batch_mib)
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(pool_environment(pool))
        try:
            seconds, cpu, peak_kib, _ = run_child(agent_command(config, "once"))
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return {"mode": "catch-up", "pool": pool, "batch_mib": batch_mib, "seconds": seconds,
            "cpu_seconds": cpu, "peak_rss_mib": peak_kib / 1024, "loadavg": before}


def read_status(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM of a process in KiB."""
    values = {}
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = row.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0])
    return values


def measure_tailing(log: Path, scratch: Path, batch_mib: int, pool: str, rate: int,
                    seconds: float) -> dict[str, object]:
    """Append lines of log to a tailed file at `rate` lines/s; sample the agent's RSS."""
    before = loadavg()
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        tailed = Path(folder) / "access.log"
        tailed.touch()
        config = write_config(Path(folder), tailed, batch_mib)
        agent = subprocess.Popen(agent_command(config, "run"), env=pool_environment(pool),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples = []
        written = 0
        try:
            time.sleep(2.0)  # imports and start-up
            started = time.monotonic()
            with open(log, "rb") as source, open(tailed, "ab") as sink:
                while time.monotonic() - started < seconds:
                    due = int((time.monotonic() - started) * rate) - written
                    lines = [source.readline() for _ in range(max(due, 0))]
                    sink.write(b"".join(lines))
                    sink.flush()
                    written += len(lines)
                    samples.append(read_status(agent.pid))
                    time.sleep(0.5)
            time.sleep(4.0)  # the last flush interval
            samples.append(read_status(agent.pid))
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
    rss = [sample["VmRSS"] for sample in samples]
    return {"mode": "tailing", "pool": pool, "batch_mib": batch_mib, "rate": rate,
            "seconds": seconds, "lines_written": written,
            "peak_rss_mib": max(sample["VmHWM"] for sample in samples) / 1024,
            "last_rss_mib": rss[-1] / 1024, "median_rss_mib": sorted(rss)[len(rss) // 2] / 1024,
            "loadavg": before}


def measure_daemon_catch_up(log: Path, scratch: Path, batch_mib: int, pool: str,
                            seconds: float) -> dict[str, object]:
    """Start `clicktrail-agent run` on the whole log; sample its RSS for `seconds` seconds."""
    before = loadavg()
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        config = write_config(Path(folder), log, batch_mib)
        agent = subprocess.Popen(agent_command(config, "run"), env=pool_environment(pool),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples = []
        try:
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                samples.append(read_status(agent.pid))
                time.sleep(0.5)
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        files = sum(1 for _ in (Path(folder) / "store").rglob("*.parquet"))
    return {"mode": "daemon catch-up", "pool": pool, "batch_mib": batch_mib, "seconds": seconds,
            "store_files": files,
            "peak_rss_mib": max(sample["VmHWM"] for sample in samples) / 1024,
            "last_rss_mib": samples[-1]["VmRSS"] / 1024, "loadavg": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="access log in Apache combined format")
    parser.add_argument("--batch-mib", type=int, nargs="*", default=[2, 8, 32],
                        help="max_batch_bytes values in MiB (default: %(default)s)")
    parser.add_argument("--pools", nargs="+", default=["default"],
                        help="Arrow memory pools: default, mimalloc, jemalloc, system "
                        "(default: %(default)s)")
    parser.add_argument("--rate", type=int, default=20_000,
                        help="lines per second appended while tailing (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="duration of the tailing run in seconds (default: %(default)s)")
    parser.add_argument("--no-tailing", action="store_true", help="skip the tailing runs")
    parser.add_argument("--daemon-catch-up", type=float, default=0.0, metavar="SECONDS",
                        help="also run `clicktrail-agent run` on the whole log for this many "
                        "seconds per batch size (default: not run)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()),
                        help="folder for the agent's state and store (default: %(default)s)")
    args = parser.parse_args()
    if args.seconds <= 0 or args.seconds > 600:
        parser.error(f"--seconds must be between 0 and 600, got {args.seconds}")
    if args.daemon_catch_up < 0 or args.daemon_catch_up > 600:
        parser.error(f"--daemon-catch-up must be between 0 and 600, got {args.daemon_catch_up}")

    results = []
    for pool in args.pools:
        for batch_mib in args.batch_mib:
            results.append(measure_catch_up(args.log, args.scratch, batch_mib, pool))
            print(json.dumps(results[-1]), flush=True)
            if args.daemon_catch_up > 0:
                results.append(measure_daemon_catch_up(args.log, args.scratch, batch_mib, pool,
                                                       args.daemon_catch_up))
                print(json.dumps(results[-1]), flush=True)
        if not args.no_tailing:
            results.append(measure_tailing(args.log, args.scratch, 8, pool, args.rate,
                                           args.seconds))
            print(json.dumps(results[-1]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
