"""`clicktrail-agent once` end to end: real logs in, Hive-partitioned Parquet in the store."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter

from click.testing import CliRunner
from clicktrail.agent.cli import main
from clicktrail.agent.schema import MAX_REJECT_LINE_CHARS

from .conftest import CASES, copy_logs, demo_config_text, read_store, write_config

EXPECTED = json.loads((CASES / "expected_demo_logs.json").read_text())
PIXEL = '127.0.0.9 - - [{when}] "GET /o/7d81d5.{rcpt}.gif HTTP/1.1" 200 42 "-" "Mozilla/5.0"\n'


def run_once(config) -> str:
    result = CliRunner().invoke(main, ["once", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result.output


def store_files(store) -> dict[str, float]:
    found = {}
    for folder, _, names in os.walk(store):
        for name in names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, store)] = os.path.getmtime(path)
    return found


def tracking_config(workdir, log_format="combined"):
    text = demo_config_text(tracking_paths=str(workdir / "logs" / "t.log*"),
                            mta_paths=str(workdir / "logs" / "postfix.log*"),
                            log_format=f'"{log_format}"')
    return write_config(workdir, text)


def test_demo_logs_match_ground_truth(workdir):
    copy_logs("apache/tracking_rich.log*", workdir / "logs")
    copy_logs("postfix/postfix.log*", workdir / "logs")
    config = write_config(workdir, demo_config_text(
        tracking_paths=str(workdir / "logs" / "tracking_rich.log*"),
        mta_paths=str(workdir / "logs" / "postfix.log*")))

    output = run_once(config)
    events = read_store(workdir / "store").to_pylist()

    assert "read 6 file(s)" in output
    counts = Counter((e["delivery_id"], e["event_type"]) for e in events)
    for delivery, kinds in EXPECTED["apache_rich"].items():
        for kind in ("open", "click", "unsubscribe", "mirror"):
            assert counts[(delivery, kind)] == kinds.get(kind, 0), (delivery, kind)
    for delivery, finals in EXPECTED["postfix_runA"].items():
        if delivery == "d3ad00":
            continue  # deleted with postsuper: Postfix logs no per-message outcome
        for final in ("sent", "bounced", "expired", "rejected"):
            assert counts[(delivery, final)] == finals.get(final, 0), (delivery, final)
    assert len({e["event_id"] for e in events}) == len(events)
    assert {str(e["event_date"]) for e in events} == {"2026-12-04"}


def test_second_run_writes_nothing(workdir):
    copy_logs("apache/tracking_access.log*", workdir / "logs")
    for path in (workdir / "logs").iterdir():
        path.rename(path.with_name(path.name.replace("tracking_access.log", "t.log")))
    config = tracking_config(workdir)
    run_once(config)
    before = store_files(workdir / "store")

    output = run_once(config)

    assert "0 line(s): 0 event(s), 0 rejected line(s), 0 file(s) uploaded" in output
    assert store_files(workdir / "store") == before


def test_appended_lines_give_exactly_their_events(workdir):
    log = workdir / "logs" / "t.log"
    log.write_text(PIXEL.format(when="04/Dec/2026:20:20:32 +0100", rcpt="a1"))
    config = tracking_config(workdir)
    run_once(config)

    with log.open("a") as f:
        f.write(PIXEL.format(when="04/Dec/2026:23:59:59 +0100", rcpt="a2"))
        f.write(PIXEL.format(when="05/Dec/2026:00:00:01 +0100", rcpt="a3"))
        f.write('127.0.0.9 - - [05/Dec/2026:01:00:00 +0100] "GET /o/7d81d5.a4')  # no newline yet
    run_once(config)
    events = read_store(workdir / "store").sort_by("source_offset").to_pylist()

    assert [e["recipient_id"] for e in events] == ["a1", "a2", "a3"]
    # event_date is the UTC day: 00:00:01 in Paris is still 4 December in UTC.
    assert [str(e["event_date"]) for e in events] == ["2026-12-04"] * 3

    with log.open("a") as f:
        f.write('.gif HTTP/1.1" 200 42 "-" "Mozilla/5.0"\n')
    run_once(config)
    events = read_store(workdir / "store").sort_by("source_offset").to_pylist()

    assert [e["recipient_id"] for e in events] == ["a1", "a2", "a3", "a4"]
    assert [str(e["event_date"]) for e in events][-1] == "2026-12-05"


def test_rotated_and_compressed_copies_read_once(workdir):
    log = workdir / "logs" / "t.log"
    log.write_text(PIXEL.format(when="04/Dec/2026:20:00:00 +0100", rcpt="b1"))
    config = tracking_config(workdir)
    run_once(config)

    # rename + create, with a line written to the old file after the last read
    with log.open("a") as f:
        f.write(PIXEL.format(when="04/Dec/2026:20:00:01 +0100", rcpt="b2"))
    log.rename(workdir / "logs" / "t.log.1")
    log.write_text(PIXEL.format(when="04/Dec/2026:20:00:02 +0100", rcpt="b3"))
    run_once(config)

    # delaycompress: .1 becomes .2.gz, then another rotation
    rotated = workdir / "logs" / "t.log.1"
    (workdir / "logs" / "t.log.2.gz").write_bytes(gzip.compress(rotated.read_bytes()))
    rotated.unlink()
    log.rename(rotated)
    log.write_text(PIXEL.format(when="04/Dec/2026:20:00:03 +0100", rcpt="b4"))
    run_once(config)
    run_once(config)

    events = read_store(workdir / "store").to_pylist()
    assert sorted(e["recipient_id"] for e in events) == ["b1", "b2", "b3", "b4"]


def test_rejects_are_stored_with_file_offset_reason(workdir):
    log = workdir / "logs" / "t.log"
    good = PIXEL.format(when="04/Dec/2026:20:00:00 +0100", rcpt="c1")
    log.write_bytes(good.encode() + b"not a log line \xff\xfe\n" + b"x" * 70000 + b"\n" + good.encode())
    config = tracking_config(workdir)

    run_once(config)
    rejects = read_store(workdir / "store", "rejects").sort_by("source_offset").to_pylist()
    events = read_store(workdir / "store").to_pylist()

    assert len(events) == 2
    assert [(r["source_path"], r["source_offset"], r["reason"]) for r in rejects] == [
        (str(log), len(good), "line does not match log_format"),
        (str(log), len(good) + 18, "line longer than max_line_bytes (65536)"),
    ]
    assert rejects[0]["line"] == "not a log line \ufffd\ufffd"
    assert rejects[1]["line_bytes"] == 70000
    assert len(rejects[1]["line"]) == MAX_REJECT_LINE_CHARS
