"""Measure the agent's throughput against the tools a user could use instead, in one run.

On one access log in Apache combined format (bench/generate.py writes one), this measures lines
per second of:

1. the agent end to end: `clicktrail-agent once` in a child process, reading the file, parsing,
   sealing Parquet batches into the spool (fsynced) and uploading them to a store in a local
   folder. Interpreter start and imports are included. A second child runs
   clicktrail.agent.pipeline.run_once in-process with timers around each stage, which splits the
   time into line splitting, parsing, spool writes, checkpoint commits, upload and the rest;
2. the loop a user would write with apache-log-parser: make_parser(), one call per line, the
   resulting dicts collected in a list. The loop costs the same per line at any size, so on a
   large file it runs on the first --max-baseline-lines lines only (the dicts of 10^7 lines
   would not fit in memory);
3. GoAccess parsing the same file into a JSON report, under `unshare --net` when that works,
   so that it can look up no host name;
4. `wc -l`, the floor: reading the file and counting newlines.

Every tool runs pinned to CPU 0 with `taskset -c 0` where taskset exists. Each figure is the
best of --repeats runs, and the load average is read before each run. The table gives lines per second,
the agent's ratios to each anchor and the peak RSS of the agent's process.

    .venv/bin/python bench/agent_throughput.py /tmp/clicktrail-bench/access.log
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

COMBINED = '%h %l %u %t "%r" %>s %O "%{Referer}i" "%{User-Agent}i"'
AGENT_SUMMARY = re.compile(r"read (\d+) file\(s\), (\d+) line\(s\): (\d+) event\(s\), (\d+) "
                           r"rejected line\(s\), (\d+) file\(s\) uploaded")
CONFIG_TEMPLATE = """\
[agent]
host_id = "bench"
state_dir = {state_dir}

[store]
url = {store}

[[sources]]
name = "tracking"
kind = "access_log"
paths = [{log}]
log_format = "combined"
routes = "generic"
"""
# Timers of the stage split, in the order of the pipeline: (module, attribute, stage name).
# The wrapped functions never call one another, so their times add up without overlap.
STAGES = (
    ("clicktrail.agent.pipeline", "split_lines", "split lines"),
    ("clicktrail.agent.parsers.access_log", "AccessLogParser.parse", "parse"),
    ("clicktrail.agent.spool", "write_batch", "spool write (Parquet, fsync)"),
    ("clicktrail.agent.checkpoint", "CheckpointStore.commit", "checkpoint commit"),
    ("clicktrail.agent.pipeline", "forward_pending", "upload to the store"),
)


@dataclass
class Measurement:
    """The best of several runs of one tool on the whole file or a prefix of it."""

    tool: str
    lines: int
    seconds: float
    loadavg: str
    peak_rss_kib: int = 0
    # User plus system CPU time of the child, which a busy machine inflates less than wall time.
    cpu_seconds: float = 0.0
    details: dict[str, object] = field(default_factory=dict)

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else float("inf")


def pinned(command: list[str]) -> list[str]:
    """Prefix command with `taskset -c 0` when taskset is installed."""
    taskset = shutil.which("taskset")
    return [taskset, "-c", "0", *command] if taskset else command


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run_child(command: list[str]) -> tuple[float, float, int, str]:
    """Run command; return its wall time and CPU time in seconds, peak RSS in KiB and stdout.

    os.wait4 returns the rusage of this child alone (ru_maxrss is in KiB on Linux). taskset and
    unshare exec the tool in their own process, so the figure is the tool's.
    """
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        # Tell Popen the child is reaped, or it would warn that the child is still running.
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        output, errors = stdout.read(), stderr.read()

    if child.returncode != 0:
        raise RuntimeError(f"{command[0]} failed with exit status {child.returncode}: "
                           f"{errors.decode(errors='replace')[-2000:]}")
    cpu_seconds = usage.ru_utime + usage.ru_stime
    return seconds, cpu_seconds, usage.ru_maxrss, output.decode(errors="replace")


def best_of(repeats: int, tool: str, run: Callable[[], Measurement]) -> Measurement:
    """Run a measurement `repeats` times and keep the fastest, with the load before each."""
    best: Measurement | None = None
    loads = []
    for _ in range(repeats):
        before = loadavg()
        current = run()
        loads.append(before)
        if best is None or current.seconds < best.seconds:
            best = current
    assert best is not None
    best.tool = tool
    best.loadavg = " | ".join(loads)
    best.details["runs"] = repeats
    return best


def measure_wc(log: Path) -> Measurement:
    seconds, cpu, peak, output = run_child(pinned(["wc", "-l", str(log)]))
    return Measurement("wc -l", int(output.split()[0]), seconds, "", peak, cpu)


def write_agent_config(workdir: Path, log: Path) -> Path:
    config = workdir / "clicktrail.toml"
    config.write_text(CONFIG_TEMPLATE.format(state_dir=json.dumps(str(workdir / "state")),
                                             store=json.dumps(str(workdir / "store")),
                                             log=json.dumps(str(log))))
    return config


def measure_agent(log: Path, scratch: Path) -> Measurement:
    """Run `clicktrail-agent once` on a fresh state and store; read its summary line."""
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        config = write_agent_config(Path(folder), log)
        command = [sys.executable, "-m", "clicktrail.agent.cli", "once", "--config", str(config)]
        seconds, cpu, peak, output = run_child(pinned(command))
    found = AGENT_SUMMARY.search(output)
    if found is None:
        raise RuntimeError(f"unexpected output of clicktrail-agent once: {output!r}")
    _, lines, events, rejects, uploaded = (int(value) for value in found.groups())
    return Measurement("agent end to end", lines, seconds, "", peak, cpu,
                       {"events": events, "rejects": rejects, "files_uploaded": uploaded})


def measure_agent_stages(log: Path, scratch: Path, profile: Path | None = None) -> Measurement:
    """Run run_once in a child with a timer around each stage (see stage_split_main)."""
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        config = write_agent_config(Path(folder), log)
        command = [sys.executable, str(Path(__file__).resolve()), "--stage-split", str(config)]
        if profile is not None:
            command += ["--profile", str(profile)]
        _, cpu, peak, output = run_child(pinned(command))
    report = json.loads(output)
    return Measurement("agent run_once, in-process", report["lines"], report["seconds"], "",
                       peak, cpu, {"stages": report["stages"], "events": report["events"],
                              "import_s": report["import_s"]})


def measure_naive(log: Path, max_lines: int) -> Measurement:
    """Run the apache-log-parser loop in a child, so that its dicts do not stay in this one."""
    command = [sys.executable, str(Path(__file__).resolve()), "--naive-loop", str(log),
               "--max-baseline-lines", str(max_lines)]
    _, cpu, peak, output = run_child(pinned(command))
    report = json.loads(output)
    return Measurement("apache-log-parser loop", report["lines"], report["seconds"], "", peak,
                       cpu, {"parsed": report["parsed"], "failed": report["failed"]})


def goaccess_command(log: Path, report: Path) -> list[str]:
    """Build the GoAccess 1.7 command line: combined format, JSON output, no host lookups.

    Per `goaccess --help` of 1.7, GoAccess resolves host names only for its terminal output
    (which -o replaces) or with -d/--with-output-resolver. --no-global-config keeps
    /etc/goaccess/goaccess.conf from adding options, and unshare --net, where it works, takes the
    network away altogether.
    """
    command = ["goaccess", str(log), "--log-format=COMBINED", "--no-global-config",
               "--no-progress", "--no-parsing-spinner", "-o", str(report)]
    command = pinned(command)
    if unshare_works():
        command = ["unshare", "--net", *command]
    return command


def unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


def measure_goaccess(log: Path, scratch: Path) -> Measurement:
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        report = Path(folder) / "report.json"
        seconds, cpu, peak, _ = run_child(goaccess_command(log, report))
        general = json.loads(report.read_text())["general"]
    return Measurement("GoAccess (JSON report)", int(general["total_requests"]), seconds, "",
                       peak, cpu, {"valid_requests": general["valid_requests"],
                              "failed_requests": general["failed_requests"],
                              "network": "unshare --net" if unshare_works() else "host"})


def goaccess_version() -> str | None:
    if shutil.which("goaccess") is None:
        return None
    output = subprocess.run(["goaccess", "--version"], capture_output=True, text=True).stdout
    return output.splitlines()[0].strip() if output else "unknown"


@dataclass
class Results:
    log: str
    log_bytes: int
    measurements: dict[str, Measurement]
    pinned: bool
    goaccess: str | None

    def ratio(self, numerator: str, denominator: str) -> float | None:
        if numerator not in self.measurements or denominator not in self.measurements:
            return None
        return (self.measurements[numerator].lines_per_s
                / self.measurements[denominator].lines_per_s)

    def cpu_ratio(self, numerator: str, denominator: str) -> float:
        """Return the ratio of lines per CPU second, which a busy machine distorts less."""
        first, second = self.measurements[numerator], self.measurements[denominator]
        if first.cpu_seconds == 0 or second.lines == 0:
            return float("nan")
        if second.cpu_seconds == 0:
            return 0.0
        return (first.lines / first.cpu_seconds) / (second.lines / second.cpu_seconds)


def run_all(args: argparse.Namespace) -> Results:
    log: Path = args.log.resolve()
    scratch = Path(tempfile.mkdtemp(prefix="clicktrail-bench-", dir=args.scratch))
    measured: dict[str, Measurement] = {}
    try:
        measured["wc"] = best_of(args.repeats, "wc -l", lambda: measure_wc(log))
        measured["agent"] = best_of(args.repeats, "agent end to end (clicktrail-agent once)",
                                    lambda: measure_agent(log, scratch))
        measured["stages"] = best_of(args.repeats, "agent run_once (stage split)",
                                     lambda: measure_agent_stages(log, scratch))
        measured["naive"] = best_of(args.repeats, "apache-log-parser loop",
                                    lambda: measure_naive(log, args.max_baseline_lines))
        if goaccess_version() is not None and not args.no_goaccess:
            measured["goaccess"] = best_of(args.repeats, "GoAccess (JSON report)",
                                           lambda: measure_goaccess(log, scratch))
        if args.profile is not None:
            measure_agent_stages(log, scratch, args.profile)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Results(str(log), log.stat().st_size, measured, shutil.which("taskset") is not None,
                   goaccess_version())


def format_table(results: Results) -> str:
    rows = [f"{'tool':<44} {'lines':>11} {'best s':>8} {'CPU s':>8} {'lines/s':>11} "
            f"{'agent x':>8} {'peak RSS':>9}  load avg before each run"]
    for key, item in results.measurements.items():
        ratio = results.ratio("agent", key)
        ratio_text = f"{ratio:8.2f}" if ratio is not None and key != "agent" else f"{'':>8}"
        rows.append(f"{item.tool:<44} {item.lines:>11} {item.seconds:>8.2f} "
                    f"{item.cpu_seconds:>8.2f} {item.lines_per_s:>11,.0f} {ratio_text} "
                    f"{item.peak_rss_kib / 1024:>6.0f} MiB"
                    f"  {item.loadavg}")
    stages = results.measurements.get("stages")
    if stages is not None:
        rows.append("")
        rows.append(f"agent stages (in-process run_once, imports {stages.details['import_s']:.2f} s "
                    "not included):")
        for name, seconds in stages.details["stages"].items():  # type: ignore[union-attr]
            share = seconds / stages.seconds * 100
            rate = stages.lines / seconds if seconds > 0 else float("inf")
            rows.append(f"  {name:<42} {seconds:>8.2f} s {share:>5.1f} %  {rate:>13,.0f} lines/s")
    rows.append("")
    for anchor, label, target in (("naive", "apache-log-parser loop", 10.0),
                                  ("goaccess", "GoAccess", 2.0)):
        ratio = results.ratio("agent", anchor)
        if ratio is None:
            rows.append(f"target agent >= {target:g}x {label}: not measured")
            continue
        verdict = "met" if ratio >= target else "missed"
        rows.append(f"target agent >= {target:g}x {label}: {verdict} ({ratio:.2f}x; by CPU "
                    f"time {results.cpu_ratio('agent', anchor):.2f}x)")
    rows.append(f"pinned to CPU 0 with taskset: {'yes' if results.pinned else 'no'}; "
                f"GoAccess: {results.goaccess or 'not installed'}")
    return "\n".join(rows)


def naive_loop_main(log: Path, max_lines: int) -> None:
    """Parse the log as a user's apache-log-parser loop would; print a JSON report on stdout."""
    import apache_log_parser

    parse = apache_log_parser.make_parser(COMBINED)
    entries = []
    failed = 0
    lines = 0
    started = time.perf_counter()
    with open(log, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if lines == max_lines:
                break
            lines += 1
            try:
                entries.append(parse(line))
            except apache_log_parser.LineDoesntMatchException:
                failed += 1
    seconds = time.perf_counter() - started
    print(json.dumps({"lines": lines, "parsed": len(entries), "failed": failed,
                      "seconds": seconds}))


def stage_split_main(config_path: Path, profile: Path | None) -> None:
    """Run run_once with a timer around each stage; print a JSON report on stdout."""
    import importlib

    started = time.perf_counter()
    from clicktrail.agent.config import load_config
    from clicktrail.agent.pipeline import run_once
    import_s = time.perf_counter() - started

    totals: dict[str, float] = {}
    for module_name, attribute, stage in STAGES:
        owner = importlib.import_module(module_name)
        *classes, name = attribute.split(".")
        for class_name in classes:
            owner = getattr(owner, class_name)
        setattr(owner, name, _timed(getattr(owner, name), stage, totals))

    config = load_config(config_path)
    started = time.perf_counter()
    if profile is None:
        result = run_once(config)
    else:
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(run_once, config)
        profiler.dump_stats(profile)
    seconds = time.perf_counter() - started

    stages = {stage: totals.get(stage, 0.0) for _, _, stage in STAGES}
    stages["reading, batching and the rest"] = seconds - sum(stages.values())
    print(json.dumps({"lines": result.lines, "events": result.events, "seconds": seconds,
                      "import_s": import_s, "stages": stages}))


def _timed(function: Callable, stage: str, totals: dict[str, float]) -> Callable:
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[stage] = totals.get(stage, 0.0) + time.perf_counter() - started
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, nargs="?", help="access log in Apache combined format")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per tool; the fastest counts (default: %(default)s)")
    parser.add_argument("--max-baseline-lines", type=int, default=1_000_000,
                        help="lines the apache-log-parser loop reads at most "
                        "(default: %(default)s)")
    parser.add_argument("--no-goaccess", action="store_true", help="skip GoAccess")
    parser.add_argument("--profile", type=Path,
                        help="also profile one in-process agent run with cProfile into this file")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()),
                        help="folder for the agent's state and store (default: %(default)s)")
    parser.add_argument("--stage-split", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--naive-loop", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.stage_split is not None:
        stage_split_main(args.stage_split, args.profile)
        return
    if args.naive_loop is not None:
        naive_loop_main(args.naive_loop, args.max_baseline_lines)
        return
    if args.log is None:
        parser.error("the log file argument is missing")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    results = run_all(args)
    print(format_table(results))
    if args.json is not None:
        payload = asdict(results)
        for key, item in results.measurements.items():
            payload["measurements"][key]["lines_per_s"] = item.lines_per_s
        payload["ratios"] = {key: results.ratio("agent", key) for key in results.measurements}
        payload["cpu_ratios"] = {key: results.cpu_ratio("agent", key)
                                 for key in results.measurements}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
