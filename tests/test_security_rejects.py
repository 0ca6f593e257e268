"""Rejected lines in <store>/rejects/: addresses masked as in events, erased with a recipient."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from clicktrail.agent import schema
from clicktrail.agent.batch import mask_ip_addresses
from clicktrail.agent.cli import main as agent_main
from clicktrail.reporter import retention
from clicktrail.reporter.cli import main as report_main
from clicktrail.reporter.store import open_store

TRACKING_LINES = [
    # Rejected for its day 99; recipient r77.
    '192.0.2.17 - - [99/Dec/2026:20:00:00 +0000] "GET /o/d1/r77.gif HTTP/1.1" 200 42 "-" "t"',
    # Rejected for its missing fields; recipient r78.
    '2001:db8:1234:5678::1 - - [04/Dec/2026:20:00:00 +0000] "GET /o/d1/r78.gif HTTP/1.1" 200 42',
    "not a log line from 198.51.100.23 or [2001:db8:aa:bb::9]:443 or ::ffff:203.0.113.200",
]
MAIL_LINE = ("Dec 99 19:23:15 mx postfix/smtp[3]: 2B38717645F: to=<jane.doe@example.com>, "
             "relay=mx.example.com[192.0.2.17]:25, delay=0.01, dsn=2.0.0, status=sent (250 ok)")
# A valid open of recipient r77, which erasure removes from events/.
EVENT_LINE = '192.0.2.17 - - [04/Dec/2026:20:00:00 +0000] "GET /o/d1/r77.gif HTTP/1.1" 200 42 "-" "t"'

EXPECTED_TRACKING = {
    "truncate": [
        '192.0.2.0 - - [99/Dec/2026:20:00:00 +0000] "GET /o/d1/r77.gif HTTP/1.1" 200 42 "-" "t"',
        '2001:db8:1234:: - - [04/Dec/2026:20:00:00 +0000] "GET /o/d1/r78.gif HTTP/1.1" 200 42',
        "not a log line from 198.51.100.0 or [2001:db8:aa::]:443 or 203.0.113.0",
    ],
    "drop": [
        '- - - [99/Dec/2026:20:00:00 +0000] "GET /o/d1/r77.gif HTTP/1.1" 200 42 "-" "t"',
        '- - - [04/Dec/2026:20:00:00 +0000] "GET /o/d1/r78.gif HTTP/1.1" 200 42',
        "not a log line from - or [-]:443 or -",
    ],
    "keep": TRACKING_LINES,
}
EXPECTED_MAIL = {
    "truncate": MAIL_LINE.replace("jane.doe@", "*@").replace("192.0.2.17", "192.0.2.0"),
    "drop": MAIL_LINE.replace("jane.doe@", "*@").replace("192.0.2.17", "-"),
    "keep": MAIL_LINE.replace("jane.doe@", "*@"),
}


def build_store(tmp_path: Path, client_ip: str | None = None) -> Path:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "t.log").write_text("\n".join([EVENT_LINE, *TRACKING_LINES]) + "\n")
    (logs / "mail.log").write_text(MAIL_LINE + "\n")
    mode = f'client_ip = "{client_ip}"\n' if client_ip else ""
    config = tmp_path / "clicktrail.toml"
    config.write_text(f"""
[agent]
host_id = "mx1"
state_dir = "state"
{mode}
[store]
url = "store"

[[sources]]
name = "tracking"
kind = "access_log"
paths = ["logs/t.log*"]
routes = "generic"

[[sources]]
name = "mta"
kind = "postfix"
paths = ["logs/mail.log*"]
""")
    result = CliRunner().invoke(agent_main, ["once", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "1 event(s), 4 rejected line(s)" in result.output
    return config


def reject_lines(store: Path, source: str) -> list[str]:
    table = ds.dataset(store / "rejects", partitioning="hive").to_table(
        columns=["source_name", "source_offset", "line"])
    rows = sorted((row["source_offset"], row["line"]) for row in table.to_pylist()
                  if row["source_name"] == source)
    return [text for _, text in rows]


def event_recipients(store: Path) -> list[str]:
    files = sorted((store / "events").rglob("*.parquet"))
    return [value for path in files
            for value in pq.read_table(path, columns=["recipient_id"]).column(0).to_pylist()]


@pytest.mark.parametrize("client_ip", [None, "truncate", "drop", "keep"])
def test_reject_lines_masked_like_events(tmp_path, client_ip):
    store = build_store(tmp_path, client_ip).parent / "store"
    mode = client_ip or "truncate"

    assert reject_lines(store, "tracking") == EXPECTED_TRACKING[mode]
    assert reject_lines(store, "mta") == [EXPECTED_MAIL[mode]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("at 20:00:00 on 2026:12:04", "at 20:00:00 on 2026:12:04", id="times"),
        pytest.param("v1.2.3.4.5 and 1.2.3", "v1.2.3.4.5 and 1.2.3", id="versions"),
        pytest.param("host 256.1.2.3", "host 256.1.2.3", id="not-an-address"),
        pytest.param("peer 10.1.2.3:8080.", "peer 10.1.2.0:8080.", id="port-and-dot"),
        pytest.param("from 2001:db8::1: refused", "from 2001:db8::: refused", id="ipv6-colon"),
        pytest.param("fe80::1%eth0", "fe80::%eth0", id="zone"),
        pytest.param("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::", id="full-form"),
    ],
)
def test_mask_ip_addresses(text, expected):
    assert mask_ip_addresses(text, "truncate") == expected


def test_erase_recipient_removes_reject_rows(tmp_path):
    config = build_store(tmp_path)
    store = tmp_path / "store"

    result = CliRunner().invoke(report_main, ["erase-recipient", "--config", str(config),
                                              "--recipient-id", "r77"])

    assert result.exit_code == 0, result.output
    assert "2 rows removed" in result.output
    assert event_recipients(store) == []
    lines = reject_lines(store, "tracking")
    assert lines == EXPECTED_TRACKING["truncate"][1:]
    assert not any("r77" in text for text in lines)
    assert reject_lines(store, "mta") == [EXPECTED_MAIL["truncate"]]


def test_erase_recipient_of_other_delivery_keeps_rejects(tmp_path):
    config = build_store(tmp_path)

    result = CliRunner().invoke(report_main, ["erase-recipient", "--config", str(config),
                                              "--recipient-id", "r78", "--delivery-id", "d9"])

    assert result.exit_code == 0, result.output
    assert "0 rows removed" in result.output
    assert reject_lines(tmp_path / "store", "tracking") == EXPECTED_TRACKING["truncate"]


def test_erase_matches_percent_encoded_id(tmp_path):
    rejects_dir = tmp_path / "store" / "rejects" / "event_date=2026-12-05"
    rejects_dir.mkdir(parents=True)
    lines = ["GET /r/?rcpt=ann%2B1%40example.org HTTP/1.1", "GET /r/?rcpt=ann%2b1%40example.org",
             "GET /r/?rcpt=ann+1@example.org", "GET /r/?rcpt=bob%2B1%40example.org"]
    table = pa.table({
        "source_kind": ["access_log"] * 4, "source_name": ["t"] * 4, "source_host": ["mx1"] * 4,
        "source_path": ["/l"] * 4, "source_generation": ["g"] * 4, "source_offset": [0, 1, 2, 3],
        "reason": ["r"] * 4, "line": lines, "line_bytes": [len(text) for text in lines],
        "ingest_time": [datetime(2026, 12, 5, tzinfo=UTC)] * 4,
    }, schema=schema.REJECT_SCHEMA)
    pq.write_table(table, rejects_dir / "a.parquet")

    result = retention.erase_recipient(open_store(str(tmp_path / "store")), "ann+1@example.org")

    assert result.reject_rows_removed == 3
    remaining = pq.read_table(rejects_dir / "a.parquet").column("line").to_pylist()
    assert remaining == ["GET /r/?rcpt=bob%2B1%40example.org"]
