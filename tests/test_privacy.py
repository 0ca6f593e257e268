"""Privacy at ingest (client address truncation, range tagging), retention and erasure."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from clicktrail.agent import schema
from clicktrail.agent.cli import main as agent_main
from clicktrail.agent.config import ConfigError, load_config
from clicktrail.agent.lines import split_lines
from clicktrail.agent.parsers.access_log import AccessLogParser
from clicktrail.agent.parsers.base import SourceContext
from clicktrail.agent.store import open_store as open_agent_store
from clicktrail.agent.store import upload_file
from clicktrail.reporter import retention
from clicktrail.reporter.cli import main as report_main
from clicktrail.reporter.store import open_store

from . import s3_server
from .numbered import LINE, append, stored_numbers, write_config
from .s3_server import REGION

# Fixtures from s3_server, bound here so that pytest finds them in this module.
moto_server = s3_server.moto_server
s3_bucket = s3_server.s3_bucket
s3_env = s3_server.s3_env

CONTEXT = SourceContext(host="mx1", source="tracking", kind="access_log", path="/var/log/t.log",
                        generation="ab12", ingest_time=datetime(2026, 12, 5, tzinfo=UTC))
XFF_LINE = ('{ip} - - [04/Dec/2026:20:00:00 +0000] "GET /o/d1/r{n}.gif HTTP/1.1" 200 42 '
            '"{xff}"')
XFF_FORMAT = '%h %l %u %t \\"%r\\" %>s %b \\"%{X-Forwarded-For}i\\"'


# --- ingest: truncation and range tagging ---------------------------------------------------

def source_config(tmp_path: Path, agent_lines: str = "", ranges: dict[str, str] | None = None):
    """Load an access_log source with the given [agent] lines and range files (name -> text)."""
    for name, text in (ranges or {}).items():
        (tmp_path / f"{name}.txt").write_text(text)
    table = ", ".join(f'{name} = "{tmp_path / name}.txt"' for name in ranges or {})
    ranges_line = f"ip_ranges = {{ {table} }}\n" if ranges else ""
    config = tmp_path / "clicktrail.toml"
    config.write_text(f"""
[agent]
host_id = "mx1"
state_dir = "{tmp_path / 'state'}"
{agent_lines}
{ranges_line}
[store]
url = "{tmp_path / 'store'}"

[[sources]]
name = "tracking"
kind = "access_log"
paths = ["{tmp_path / 't.log'}"]
log_format = "{XFF_FORMAT}"
routes = "generic"
""")
    return load_config(config).sources[0]


def parse_rows(source, clients: list[tuple[str, str]]) -> list[dict]:
    """Parse one open per (client address, X-Forwarded-For) pair; return the event rows."""
    text = "".join(XFF_LINE.format(ip=ip, xff=xff, n=n) + "\n"
                   for n, (ip, xff) in enumerate(clients))
    batch, consumed, _, _ = split_lines(text.encode(), 0, 65536)
    assert consumed == len(text.encode())
    result = AccessLogParser(source).parse(batch, CONTEXT)
    assert result.rejects.num_rows == 0, result.rejects.column("reason").to_pylist()
    return result.events.to_pylist()


def test_ipv4_truncated_to_24_by_default(tmp_path):
    rows = parse_rows(source_config(tmp_path), [("192.0.2.17", "-"), ("198.51.100.255", "-")])

    assert [row["client_ip"] for row in rows] == ["192.0.2.0", "198.51.100.0"]
    assert [row["forwarded_for"] for row in rows] == [None, None]
    assert [row["client_network"] for row in rows] == [None, None]


def test_ipv6_truncated_to_48(tmp_path):
    rows = parse_rows(source_config(tmp_path), [("2001:db8:1234:5678::1", "-"),
                                                ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "-")])

    assert [row["client_ip"] for row in rows] == ["2001:db8:1234::", "2001:db8:ffff::"]


def test_ipv4_mapped_ipv6_truncated_as_ipv4(tmp_path):
    rows = parse_rows(source_config(tmp_path), [("::ffff:192.0.2.17", "-")])

    assert rows[0]["client_ip"] == "192.0.2.0"


def test_host_name_client_becomes_null(tmp_path):
    rows = parse_rows(source_config(tmp_path), [("client7.example.net", "-")])

    assert rows[0]["client_ip"] is None


def test_forwarded_for_list_truncated(tmp_path):
    xff = "198.51.100.103, unknown, [2001:db8:1:2::9]:443, 192.0.2.5:8080,not-an-ip"
    rows = parse_rows(source_config(tmp_path), [("192.0.2.17", xff)])

    assert rows[0]["forwarded_for"] == "198.51.100.0, unknown, 2001:db8:1::, 192.0.2.0, unknown"


def test_keep_mode_stores_full_addresses(tmp_path):
    source = source_config(tmp_path, 'client_ip = "keep"')
    rows = parse_rows(source, [("192.0.2.17", "198.51.100.103, 203.0.113.247"),
                               ("2001:db8::1", "-")])

    assert [row["client_ip"] for row in rows] == ["192.0.2.17", "2001:db8::1"]
    assert rows[0]["forwarded_for"] == "198.51.100.103, 203.0.113.247"


def test_drop_mode_stores_no_address_but_tags(tmp_path):
    source = source_config(tmp_path, 'client_ip = "drop"', {"docs": "192.0.2.0/24\n"})
    rows = parse_rows(source, [("192.0.2.17", "198.51.100.103"), ("203.0.113.9", "-")])

    assert [row["client_ip"] for row in rows] == [None, None]
    assert [row["forwarded_for"] for row in rows] == [None, None]
    assert [row["client_network"] for row in rows] == ["docs", None]


def test_ranges_tag_full_address_before_truncation(tmp_path):
    ranges = {
        # Listed first, so it wins over proxies for the addresses both contain.
        "scanners": "# a scanner network\n192.0.2.128/25\n",
        "proxies": "192.0.2.0/24   # trailing comment\n\n198.51.100.0/24,GB,GB-EN,London,\n"
                   "2001:db8::/32\n",
    }
    source = source_config(tmp_path, ranges=ranges)
    clients = [("192.0.2.200", "-"), ("192.0.2.17", "-"), ("198.51.100.7", "-"),
               ("2001:db8:aa:bb::1", "-"), ("203.0.113.9", "-"), ("::ffff:192.0.2.130", "-"),
               ("2001:db9::1", "-"), ("not-an-address", "-")]
    # Repeats go through the per-distinct-value path and must map back to every row.
    rows = parse_rows(source, clients * 3)

    expected = ["scanners", "proxies", "proxies", "proxies", None, "scanners", None, None] * 3
    assert [row["client_network"] for row in rows] == expected
    assert [row["client_ip"] for row in rows][:2] == ["192.0.2.0", "192.0.2.0"]


def test_example_config_has_privacy_defaults():
    config = load_config(Path(__file__).parent.parent / "config.example.toml")

    assert config.agent.client_ip == "truncate"
    assert config.agent.ip_ranges == ()


# --- config errors ----------------------------------------------------------------------------

def test_invalid_client_ip_mode(tmp_path):
    with pytest.raises(ConfigError) as caught:
        source_config(tmp_path, 'client_ip = "hash"')

    assert "agent.client_ip" in str(caught.value)
    assert "truncate, keep, drop" in str(caught.value)


def test_missing_range_file_names_key_and_file(tmp_path):
    config = tmp_path / "clicktrail.toml"
    missing = tmp_path / "nowhere.txt"
    config.write_text(f'[agent]\nip_ranges = {{ scanners = "{missing}" }}\n'
                      f'[store]\nurl = "{tmp_path}"\n')

    with pytest.raises(ConfigError) as caught:
        load_config(config)

    assert caught.value.key == "agent.ip_ranges.scanners"
    assert f"file not found: {missing}" in str(caught.value)


@pytest.mark.parametrize("bad_line", ["192.0.2.0/33", "192.0.2.1/24", "2001:db8::/32/1", "apple"])
def test_invalid_cidr_names_file_and_line(tmp_path, bad_line):
    text = f"# header\n198.51.100.0/24\n\n{bad_line}\n192.0.2.0/24\n"

    with pytest.raises(ConfigError) as caught:
        source_config(tmp_path, ranges={"apple_mpp": text})

    assert caught.value.key == "agent.ip_ranges.apple_mpp"
    assert f"{tmp_path / 'apple_mpp.txt'} line 4: invalid CIDR" in str(caught.value)


def test_range_file_relative_to_config(tmp_path):
    (tmp_path / "ranges").mkdir()
    (tmp_path / "ranges" / "google.txt").write_text("198.51.100.0/24\n")
    config = tmp_path / "clicktrail.toml"
    config.write_text('[agent]\nip_ranges = { google_proxy = "ranges/google.txt" }\n'
                      f'[store]\nurl = "{tmp_path}"\n')

    ranges = load_config(config).agent.ip_ranges

    assert [name for name, _ in ranges] == ["google_proxy"]
    assert [str(network) for network in ranges[0][1]] == ["198.51.100.0/24"]


def test_check_config_exit_78_on_bad_range(tmp_path):
    source_config(tmp_path)
    config = tmp_path / "clicktrail.toml"
    (tmp_path / "bad.txt").write_text("192.0.2.0/24\n192.0.2.300/32\n")
    config.write_text(config.read_text().replace(
        "[agent]\n", f'[agent]\nip_ranges = {{ bad = "{tmp_path / "bad.txt"}" }}\n'))

    result = CliRunner().invoke(agent_main, ["check-config", "--config", str(config)])

    assert result.exit_code == 78
    assert "agent.ip_ranges.bad" in result.output
    assert "line 2" in result.output


# --- a store built by the agent ----------------------------------------------------------------

def dated_lines(numbers, day: str, delivery: str = "d1") -> bytes:
    line = LINE.replace("04/Dec/2026", day).replace("/o/d1/", f"/o/{delivery}/")
    return "".join(line.format(n=n) for n in numbers).encode()


def build_store(tmp_path: Path) -> Path:
    """Run `clicktrail-agent once` over 16 opens on three UTC days; return the config path.

    2026-12-04, d1: recipients 1-10. 2026-12-01, d2: recipients 3, 3 and 4.
    2026-12-02, d1: recipient 5. One line that does not parse becomes a reject.
    """
    config = write_config(tmp_path)
    log = tmp_path / "logs" / "t.log"
    append(log, range(1, 11))
    with log.open("ab") as f:
        f.write(dated_lines([3, 3, 4], "01/Dec/2026", "d2"))
        f.write(dated_lines([5], "02/Dec/2026"))
        f.write(b"this is not an access log line\n")

    result = CliRunner().invoke(agent_main, ["once", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert stored_numbers(tmp_path / "store") == [1, 2, 3, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 10]
    return config


def report(*args: str):
    return CliRunner().invoke(report_main, list(args))


def partitions(store: Path, area: str) -> list[str]:
    folder = store / area
    return sorted(os.listdir(folder)) if folder.exists() else []


def all_files(store: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(folder, name), store)
                  for folder, _, names in os.walk(store) for name in names)


def test_agent_store_has_truncated_ips(tmp_path):
    build_store(tmp_path)

    table = pq.ParquetFile(next((tmp_path / "store" / "events").rglob("*.parquet"))).read()
    assert set(table.column("client_ip").to_pylist()) == {"127.0.0.0"}
    assert table.schema.names.index("client_network") == \
        table.schema.names.index("client_ip") + 1


def add_other_entries(store: Path) -> None:
    """Add an old rejects and classified partition and three entries that are not partitions."""
    events = store / "events"
    sample = next((events / "event_date=2026-12-04").glob("*.parquet"))
    for folder in ("rejects/event_date=2026-12-01", "classified/event_date=2026-11-30"):
        (store / folder).mkdir(parents=True)
        (store / folder / sample.name).write_bytes(sample.read_bytes())
    (events / "event_date=2026-12-1").mkdir()
    (events / "event_date=2026-02-30").mkdir()
    (events / "README.txt").write_text("not a partition\n")


def test_purge_dry_run_lists_only(tmp_path):
    config = build_store(tmp_path)
    store = tmp_path / "store"
    add_other_entries(store)
    before = all_files(store)

    result = report("purge", "--config", str(config), "--before", "2026-12-04", "--dry-run")

    assert result.exit_code == 0, result.output
    assert "would delete events/event_date=2026-12-01" in result.output
    assert "would delete events/event_date=2026-12-02" in result.output
    assert "would delete rejects/event_date=2026-12-01" in result.output
    assert "would delete classified/event_date=2026-11-30" in result.output
    assert "partitions to delete: 4" in result.output
    assert "other entries left alone: 3" in result.output
    assert all_files(store) == before


def test_purge_deletes_partitions_before_date(tmp_path):
    config = build_store(tmp_path)
    store = tmp_path / "store"
    add_other_entries(store)
    agent_rejects = partitions(store, "rejects")

    result = report("purge", "--config", str(config), "--before", "2026-12-02")

    assert result.exit_code == 0, result.output
    deleted = [line for line in result.output.splitlines() if line.startswith("deleted ")]
    assert deleted == ["deleted events/event_date=2026-12-01",
                       "deleted rejects/event_date=2026-12-01",
                       "deleted classified/event_date=2026-11-30"]
    assert "left alone events/event_date=2026-12-1:" in result.output
    assert "left alone events/event_date=2026-02-30:" in result.output
    assert "left alone events/README.txt:" in result.output
    assert partitions(store, "events") == ["README.txt", "event_date=2026-02-30",
                                           "event_date=2026-12-02", "event_date=2026-12-04",
                                           "event_date=2026-12-1"]
    assert partitions(store, "classified") == []
    # The agent's own reject is dated by ingest time, which is after 2026-12-02.
    assert partitions(store, "rejects") == [p for p in agent_rejects
                                            if p != "event_date=2026-12-01"]
    (store / "events" / "README.txt").unlink()
    assert stored_numbers(store) == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10]


def test_purge_rejects_invalid_date(tmp_path):
    config = build_store(tmp_path)

    result = report("purge", "--config", str(config), "--before", "2026-12-32")

    assert result.exit_code == 2
    assert partitions(tmp_path / "store", "events") == [
        "event_date=2026-12-01", "event_date=2026-12-02", "event_date=2026-12-04"]


def test_erase_recipient_in_every_partition(tmp_path):
    config = build_store(tmp_path)
    store = tmp_path / "store"

    result = report("erase-recipient", "--config", str(config), "--recipient-id", "3")

    assert result.exit_code == 0, result.output
    assert "3 rows removed from 2 of 4 files" in result.output
    assert "rewrote events/event_date=2026-12-01/" in result.output
    assert "rewrote events/event_date=2026-12-04/" in result.output
    assert stored_numbers(store) == [1, 2, 4, 4, 5, 5, 6, 7, 8, 9, 10]
    assert not [name for name in all_files(store) if "/." in name]
    rewritten = next((store / "events" / "event_date=2026-12-01").glob("*.parquet"))
    assert pq.read_schema(rewritten).remove_metadata() == schema.EVENT_SCHEMA


def test_erase_recipient_of_one_delivery(tmp_path):
    config = build_store(tmp_path)
    store = tmp_path / "store"

    other = report("erase-recipient", "--config", str(config), "--recipient-id", "5",
                   "--delivery-id", "d2")
    erased = report("erase-recipient", "--config", str(config), "--recipient-id", "5",
                    "--delivery-id", "d1")

    assert other.exit_code == 0, other.output
    assert "0 rows removed from 0 of 4 files" in other.output
    assert erased.exit_code == 0, erased.output
    assert "2 rows removed from 2 of 4 files" in erased.output
    assert "deleted events/event_date=2026-12-02/" in erased.output
    assert partitions(store, "events") == [
        "event_date=2026-12-01", "event_date=2026-12-02", "event_date=2026-12-04"]
    assert list((store / "events" / "event_date=2026-12-02").iterdir()) == []
    assert stored_numbers(store) == [1, 2, 3, 3, 3, 4, 4, 6, 7, 8, 9, 10]


@pytest.mark.parametrize("bad_id", ["", "a b", "r/1", "x" * 129, "r1;drop"])
def test_erase_rejects_invalid_id(tmp_path, bad_id):
    config = build_store(tmp_path)

    result = report("erase-recipient", "--config", str(config), "--recipient-id", bad_id)

    assert result.exit_code == 2
    assert "invalid --recipient-id" in result.output
    assert stored_numbers(tmp_path / "store") == [1, 2, 3, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 10]


def test_purge_and_erase_on_s3(moto_server, s3_bucket, tmp_path):
    build_store(tmp_path)
    local = tmp_path / "store"
    url = f"s3://{s3_bucket}/prefix"
    remote = open_agent_store(url, moto_server.endpoint, REGION)
    for relative in all_files(local):
        upload_file(remote, str(local / relative), relative)
    store = open_store(url, moto_server.endpoint, REGION)

    erased = retention.erase_recipient(store, "3")
    purged = retention.purge_before(store, datetime(2026, 12, 2).date())

    assert erased.rows_removed == 3
    assert len(erased.files_rewritten) == 2
    assert purged.deleted == ["events/event_date=2026-12-01"]
    listing = store.filesystem.get_file_info(pafs.FileSelector(store.root, recursive=True))
    names = sorted(info.path[len(store.root) + 1:] for info in listing
                   if info.type == pafs.FileType.File)
    assert [name for name in names if name.startswith("events/")] == sorted(
        name for name in all_files(local)
        if name.startswith(("events/event_date=2026-12-02", "events/event_date=2026-12-04")))
    rewritten = next(name for name in names if name.startswith("events/event_date=2026-12-04"))
    with store.filesystem.open_input_file(store.path(rewritten)) as source:
        recipients = pq.ParquetFile(source).read(columns=["recipient_id"])
    assert sorted(int(n) for n in recipients.column(0).to_pylist()) == [
        1, 2, 4, 5, 6, 7, 8, 9, 10]


def test_purge_refuses_a_date_after_today(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    config = tmp_path / "clicktrail.toml"
    config.write_text(f'[store]\nurl = "{tmp_path / "store"}"\n')

    result = CliRunner().invoke(report_main, ["purge", "--config", str(config),
                                              "--before", "2999-01-01", "--dry-run"])

    assert result.exit_code == 2
    assert "--before 2999-01-01 is after today" in result.output
