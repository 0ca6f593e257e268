"""Smoke runs of the benchmarks on 2,000 generated lines and a 20,000-event store.

The tools must agree on what they read.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from clicktrail.agent.config import load_config
from clicktrail.agent.pipeline import run_once

from .conftest import REPO, read_store

LINES = 2_000


def load_bench(name: str) -> ModuleType:
    """Import bench/<name>.py, which is a script folder and not a package."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generate = load_bench("generate")
throughput = load_bench("agent_throughput")
reporter_store = load_bench("reporter_store")
reporter_throughput = load_bench("reporter_throughput")
fuzz = load_bench("fuzz")
memory = load_bench("agent_memory")


def generated_log(tmp_path: Path, seed: int = 7) -> tuple[Path, dict[str, int]]:
    log = tmp_path / "access.log"
    return log, generate.generate(log, LINES, seed)


def test_generator_is_deterministic(tmp_path):
    first, truth = generated_log(tmp_path / "a")
    second, _ = generated_log(tmp_path / "b")

    assert first.read_bytes() == second.read_bytes()
    assert first.read_text().count("\n") == LINES
    assert truth["events"] == truth["open"] + truth["click"] + truth["unsubscribe"] + truth["mirror"]


def test_generator_truth_matches_lines(tmp_path):
    log, truth = generated_log(tmp_path)
    shapes = {
        "open": r'"(GET|HEAD) /o/[0-9a-f]+/[0-9a-f]+\.gif(\?t=\d+)? HTTP/1\.1" (200|304) ',
        "click": r'"(GET|HEAD) /r/[0-9a-f]+/[0-9a-f]+/[1-6] HTTP/1\.1" 302 ',
        "unsubscribe": r'"(GET|POST) /u/[0-9a-f]+/[0-9a-f]+ HTTP/1\.1" 200 ',
        "mirror": r'"GET /m/[0-9a-f]+/[0-9a-f]+ HTTP/1\.1" 200 ',
    }

    text = log.read_text()

    for event_type, shape in shapes.items():
        assert len(re.findall(shape, text)) == truth[event_type], event_type
    assert ' 404 ' in text
    assert "Barracuda Sentinel" in text or "Proofpoint" in text or "python-requests" in text


def test_agent_stores_every_event(tmp_path):
    log, truth = generated_log(tmp_path)
    config = load_config(throughput.write_agent_config(tmp_path, log))

    result = run_once(config)
    events = read_store(tmp_path / "store").to_pylist()

    assert result.lines == LINES
    assert result.rejects == 0
    assert len(events) == truth["events"]
    counts = Counter(event["event_type"] for event in events)
    for event_type in ("open", "click", "unsubscribe", "mirror"):
        assert counts[event_type] == truth[event_type], event_type


def test_benchmark_line_counts_agree(tmp_path):
    log, truth = generated_log(tmp_path)
    args = argparse.Namespace(log=log, repeats=1, max_baseline_lines=LINES, no_goaccess=True,
                              profile=tmp_path / "agent.pstats", scratch=tmp_path)

    results = throughput.run_all(args)
    measured = results.measurements

    for key in ("wc", "agent", "stages", "naive"):
        assert measured[key].lines == LINES, key
        assert measured[key].seconds > 0, key
    assert measured["agent"].details["events"] == truth["events"]
    assert measured["stages"].details["events"] == truth["events"]
    assert measured["agent"].peak_rss_kib > 0
    assert measured["agent"].cpu_seconds > 0
    assert measured["naive"].details["parsed"] + measured["naive"].details["failed"] == LINES
    assert abs(sum(measured["stages"].details["stages"].values())
               - measured["stages"].seconds) < 1e-6
    assert (tmp_path / "agent.pstats").stat().st_size > 0
    assert "target agent >= 10x apache-log-parser loop" in throughput.format_table(results)


def test_benchmark_goaccess_line_count(tmp_path):
    if shutil.which("goaccess") is None:
        pytest.skip("goaccess is not installed")
    log, _ = generated_log(tmp_path)

    measured = throughput.measure_goaccess(log, tmp_path)

    assert measured.lines == LINES
    assert measured.details["valid_requests"] + measured.details["failed_requests"] == LINES



def test_reporter_benchmark_figures_agree(tmp_path):
    store = tmp_path / "store"
    counts = reporter_store.generate_store(store, events=20_000, deliveries=3, seed=3)
    assert counts["rows"] > counts["events"]  # the replay files hold duplicates

    duckdb_result = reporter_throughput.run_child("duckdb", store, tmp_path)
    nightly_result = reporter_throughput.run_child("nightly", store, tmp_path)

    assert duckdb_result["events"] == 20_000
    assert nightly_result["deliveries"] == 3
    assert nightly_result["pdf_pages"] >= 3
    reported = nightly_result["figures"]["d000"]
    expected = duckdb_result["figures"]["d000"]
    assert reported["delivered"] == expected["delivered"]
    assert reported["opens"] == expected["opens"]
    assert reported["clicks"] == expected["clicks"]
    assert reported["delivered"] > 0
    assert reported["clicks"] > 0
    assert reporter_throughput.compare_figures(duckdb_result, nightly_result) == []
    assert "reporter query time / DuckDB alone" in reporter_throughput.format_table(
        duckdb_result, nightly_result)


def test_fuzz_every_target_clean():
    results = fuzz.run(lines_per_target=1_000, seed=2, max_seconds=600)

    assert [result.target for result in results] == list(fuzz.SEEDS)
    for result in results:
        assert result.lines == 1_000, result.target
        assert result.events > 0, result.target
        assert result.rejects > 0, result.target
        assert result.exceptions == 0, result.first_failure
        assert result.culprit_lines == 0, result.first_failure
        assert result.mismatches == 0, result.first_failure


def test_fuzz_command_prints_counts(capsys, tmp_path):
    status = fuzz.main(["--lines", "300", "--seed", "2", "--json", str(tmp_path / "fuzz.json")])

    output = capsys.readouterr().out
    assert status == 0, output
    assert "access_log:adobe" in output
    assert re.search(r"^total\s+2400$", output, flags=re.M), output
    counts = json.loads((tmp_path / "fuzz.json").read_text())
    assert [entry["lines"] for entry in counts] == [300] * 8


def test_memory_benchmark_measures_each_mode(tmp_path):
    log, _ = generated_log(tmp_path)

    catch_up = memory.measure_catch_up(log, tmp_path, 2, "default")
    daemon = memory.measure_daemon_catch_up(log, tmp_path, 2, "default", 10.0)
    tailing = memory.measure_tailing(log, tmp_path, 2, "default", rate=500, seconds=2.0)

    # The interpreter with pyarrow alone takes more than 50 MiB.
    for result in (catch_up, daemon, tailing):
        assert 50 < result["peak_rss_mib"] < 1000, result
    assert daemon["store_files"] == 1  # 2,000 lines are one 2 MiB batch, uploaded in time
    assert 0 < tailing["lines_written"] <= 1000
