"""The recipient opt-out list: events of listed recipients are dropped at ingest and counted."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from clicktrail.agent.cli import main as agent_main
from clicktrail.agent.config import ConfigError, load_config

from .numbered import append, stored_numbers, write_config
from .test_daemon import notify_socket, start, wait_for_numbers  # noqa: F401 (fixture)

CASES = Path(__file__).parent / "cases" / "postfix"
# An address the opt-out file lists; no log line or error may contain it.
LISTED_ADDRESS = "listed.person@example.org"
POSTFIX_SOURCE = """
[[sources]]
name = "mta"
kind = "postfix"
paths = ["{logs}/mail.log*"]
message_id_pattern = '^<?(?P<delivery_id>[0-9a-f]+)\\.(?P<recipient_id>[0-9a-f]+)\\.'
"""


def with_optout(config: Path, optout_text: str, extra: str = "") -> Path:
    """Add [agent] optout_file (a file next to the config) and extra TOML to a config."""
    optout = config.parent / "optout.txt"
    optout.write_text(optout_text)
    text = config.read_text().replace("[agent]\n", '[agent]\noptout_file = "optout.txt"\n', 1)
    config.write_text(text + extra)
    return config


def run_once(config: Path) -> str:
    result = CliRunner().invoke(agent_main, ["once", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result.output


def agent_status(config: Path) -> tuple[dict, str]:
    as_json = CliRunner().invoke(agent_main, ["status", "--config", str(config), "--json"])
    as_text = CliRunner().invoke(agent_main, ["status", "--config", str(config)])
    assert as_json.exit_code == 0, as_json.output
    assert as_text.exit_code == 0, as_text.output
    return json.loads(as_json.output), as_text.output


def stored_events(store: Path) -> list[dict]:
    table = ds.dataset(store / "events", partitioning="hive").to_table(
        columns=["event_type", "recipient_id", "recipient_domain", "recipient_key"])
    return sorted(table.to_pylist(), key=lambda row: (row["event_type"], row["recipient_domain"]))


def test_listed_recipient_ids_dropped_and_counted(tmp_path, caplog):
    config = with_optout(write_config(tmp_path),
                         "# opt-outs of 2026-12\n3\n  7   # by phone\n\n"
                         f"{LISTED_ADDRESS}\n")
    append(tmp_path / "logs" / "t.log", range(1, 11))

    with caplog.at_level(logging.DEBUG):
        output = run_once(config)

    assert stored_numbers(tmp_path / "store") == [1, 2, 4, 5, 6, 8, 9, 10]
    assert "8 event(s)" in output
    report, text = agent_status(config)
    assert report["counters"]["tracking"]["opted_out"] == 2
    assert "source tracking: opted_out 2" in text
    assert LISTED_ADDRESS not in caplog.text
    assert LISTED_ADDRESS not in output


def test_listed_address_drops_mta_events(tmp_path, caplog):
    config = write_config(tmp_path)
    shutil.copy(CASES / "multi-recipient.log", tmp_path / "logs" / "mail.log")
    # The log writes the recipient as full.seed6@Inbox-C.example: addresses compare without case.
    config = with_optout(config, "Full.Seed6@inbox-c.EXAMPLE\n",
                         POSTFIX_SOURCE.format(logs=tmp_path / "logs"))

    with caplog.at_level(logging.DEBUG):
        run_once(config)

    events = stored_events(tmp_path / "store")
    assert [(row["event_type"], row["recipient_domain"]) for row in events] == [
        ("deferred", "dead-mx.example"), ("expired", "dead-mx.example"),
        ("sent", "inbox-b.example")]
    listed_key = hashlib.blake2b(b"full.seed6@inbox-c.example", digest_size=8).hexdigest()
    assert listed_key not in {row["recipient_key"] for row in events}
    report, _ = agent_status(config)
    assert report["counters"]["mta"]["opted_out"] == 2
    assert "seed6" not in caplog.text.lower()


def test_listed_id_drops_every_event_of_message(tmp_path):
    config = write_config(tmp_path)
    shutil.copy(CASES / "multi-recipient.log", tmp_path / "logs" / "mail.log")
    config = with_optout(config, "5eed02\n", POSTFIX_SOURCE.format(logs=tmp_path / "logs"))

    run_once(config)

    files = list((tmp_path / "store").rglob("*.parquet"))
    assert sum(pq.ParquetFile(path).metadata.num_rows for path in files
               if "events" in path.parts) == 0
    report, _ = agent_status(config)
    assert report["counters"]["mta"]["opted_out"] == 5


def test_without_list_nothing_dropped(tmp_path):
    config = write_config(tmp_path)
    append(tmp_path / "logs" / "t.log", range(1, 4))

    run_once(config)

    assert stored_numbers(tmp_path / "store") == [1, 2, 3]
    report, text = agent_status(config)
    assert "opted_out" not in report["counters"]["tracking"]
    assert "opted_out" not in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(None, "file not found: ", id="missing"),
        pytest.param(f"r1\n{LISTED_ADDRESS} extra\n", "line 2: invalid entry", id="space"),
        pytest.param("r1\n" + "x" * 321 + "\n", "line 2: invalid entry", id="too-long"),
        pytest.param(b"r1\n\xff\n", "is not UTF-8 text", id="not-utf8"),
    ],
)
def test_invalid_optout_file_names_key_and_line(tmp_path, text, message):
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace(
        "[agent]\n", '[agent]\noptout_file = "optout.txt"\n', 1))
    if isinstance(text, bytes):
        (tmp_path / "optout.txt").write_bytes(text)
    elif text is not None:
        (tmp_path / "optout.txt").write_text(text)

    with pytest.raises(ConfigError) as caught:
        load_config(config)

    assert caught.value.key == "agent.optout_file"
    assert message in str(caught.value)
    assert str(tmp_path / "optout.txt") in str(caught.value)
    assert LISTED_ADDRESS not in str(caught.value)


def test_check_config_exit_78_on_bad_optout(tmp_path):
    config = with_optout(write_config(tmp_path), "a b\n")

    result = CliRunner().invoke(agent_main, ["check-config", "--config", str(config)])

    assert result.exit_code == 78
    assert "agent.optout_file" in result.output
    assert "line 1: invalid entry" in result.output


def test_sighup_reloads_optout_list(tmp_path, notify_socket):  # noqa: F811 (fixture)
    config = write_config(tmp_path, flush_interval_s=0.2, rescan_interval_s=0.2)
    config = with_optout(config, f"2\n{LISTED_ADDRESS}\n")
    log = tmp_path / "logs" / "t.log"
    append(log, range(0, 5))
    agent_log = tmp_path / "agent.log"
    agent = start(config, notify_socket, agent_log)
    try:
        notify_socket.wait_for("READY=1")
        assert wait_for_numbers(tmp_path / "store", 4) == [0, 1, 3, 4]

        (tmp_path / "optout.txt").write_text(f"6\n{LISTED_ADDRESS}\n")
        agent.send_signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING=1")
        notify_socket.wait_for("READY=1")
        append(log, range(5, 10))
        assert wait_for_numbers(tmp_path / "store", 8) == [0, 1, 3, 4, 5, 7, 8, 9]
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    output = agent_log.read_text()
    assert "config reloaded: 1 source(s)" in output
    assert "opt-out list" in output
    assert LISTED_ADDRESS not in output


def test_metrics_count_guarded_events():
    from clicktrail.agent.metrics import AgentMetrics

    metrics = AgentMetrics(host_id="mx1")
    metrics.add_source("tracking")

    metrics.count_guarded("tracking", {"opted_out": 2, "lines": 9})
    metrics.count_guarded("tracking", {"opted_out": 1, "compressed_files_stopped": 1})

    sample = metrics.registry.get_sample_value
    assert sample("clicktrail_agent_events_opted_out_total", {"source": "tracking"}) == 3
    assert sample("clicktrail_agent_compressed_files_stopped_total", {"source": "tracking"}) == 1
