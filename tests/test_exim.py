"""Tests of the Exim parser on real Exim 4.96 main logs and on lines made from them.

tests/cases/exim/mainlog-plain and mainlog-zoned were written by Exim 4.96 (Debian 12) in runs
of tests/cases/exim/make_fixture.py against an SMTP sink on 127.0.0.1; the expected outcomes
per recipient were derived from the sink's replies (see the README there). Exim 4.96 writes
16-character message ids, so the 23-character ids of Exim >= 4.97 are tested on the same logs
with every id rewritten to the 4.97 layout (6 characters of time, 11 of process id, 4 of
sub-second time).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from clicktrail.agent import schema
from clicktrail.agent.lines import split_lines
from clicktrail.agent.parsers.base import SourceContext
from clicktrail.agent.parsers.exim import EximParser
from hypothesis import given, settings
from hypothesis import strategies as st

CASES = Path(__file__).parent / "cases" / "exim"
MESSAGE_ID_PATTERN = r"^<?(?P<delivery_id>[0-9a-f]+)\.(?P<recipient_id>[0-9a-f]+)\."
SENDER_PATTERN = r"^bounce-(?P<delivery_id>[0-9a-f]+)-(?P<recipient_id>[0-9a-f]+)@"
MAX_LINE_BYTES = 65536
CLASSIC_ID = re.compile(r"\b([0-9A-Za-z]{6})-([0-9A-Za-z]{6})-([0-9A-Za-z]{2})\b")


@dataclass
class EximConfig:
    timezone: str = "UTC"
    message_id_pattern: str | None = MESSAGE_ID_PATTERN
    envelope_sender_pattern: str | None = SENDER_PATTERN


def make_context(path: str = "mainlog") -> SourceContext:
    return SourceContext(host="mx1", source="exim", kind="exim", path=path, generation="0a",
                         ingest_time=datetime(2026, 12, 5, tzinfo=UTC))


def parse_text(parser: EximParser, text: str):
    batch, consumed, _, _ = split_lines(text.encode(), 0, MAX_LINE_BYTES)
    assert consumed == len(text.encode())
    return parser.parse(batch, make_context())


def parse_in_chunks(data: bytes, chunk_bytes: int) -> tuple[pa.Table, Counter, EximParser]:
    """Parse a log in chunks, restoring a new parser from a JSON snapshot between chunks."""
    parser = EximParser(EximConfig())
    tables = []
    counters: Counter = Counter()
    offset = 0
    while offset < len(data):
        batch, consumed, _, _ = split_lines(data[offset:offset + chunk_bytes], offset,
                                            MAX_LINE_BYTES)
        assert consumed > 0, "a line is longer than the chunk"
        result = parser.parse(batch, make_context())
        tables.append(result.events)
        counters.update(result.counters)
        offset += consumed
        state = json.loads(json.dumps(parser.snapshot()))
        parser = EximParser(EximConfig())
        parser.restore(state)
    return pa.concat_tables(tables), counters, parser


def digest(address: str) -> str:
    return hashlib.blake2b(address.lower().encode(), digest_size=8).hexdigest()


def outcomes_by_recipient(events: pa.Table, address: str) -> list[list]:
    rows = [e for e in events.to_pylist() if e["recipient_key"] == digest(address)]
    rows.sort(key=lambda e: e["source_offset"])
    return [[e["event_type"], e["bounce_type"], e["bounce_reason"]] for e in rows]


def to_exim_497_ids(text: str) -> str:
    return CLASSIC_ID.sub(lambda m: f"{m[1]}-{m[2]:0>11}-{m[3]:0>4}", text)


@pytest.mark.parametrize("chunk_bytes", [1500, 1 << 20])
@pytest.mark.parametrize("variant", ["plain", "zoned", "plain-4.97-ids"])
def test_real_run_outcomes_per_recipient(variant, chunk_bytes):
    log_name = "mainlog-" + variant.removesuffix("-4.97-ids")
    text = (CASES / log_name).read_text()
    if variant.endswith("4.97-ids"):
        text = to_exim_497_ids(text)
        assert "1xZaZY-000000004uW-0008" in text
    expected = json.loads((CASES / f"expected-{log_name.split('-')[1]}.json").read_text())
    events, counters, parser = parse_in_chunks(text.encode(), chunk_bytes)

    for address, outcomes in expected["recipients"].items():
        assert outcomes_by_recipient(events, address) == outcomes, address

    # Nothing listened on the closed port, so its deferrals are checked by rule, not by count.
    for address, final in expected["expected_unreachable"].items():
        outcomes = outcomes_by_recipient(events, address)
        assert outcomes[-1] == final
        assert len(outcomes) >= 2
        assert set(map(tuple, outcomes[:-1])) == {("deferred", "soft", "unreachable")}

    known = {digest(a) for a in [*expected["recipients"], *expected["expected_unreachable"]]}
    assert set(events["recipient_key"].to_pylist()) == known
    assert len(set(events["event_id"].to_pylist())) == events.num_rows
    # Each of the 7 bounce messages was delivered once to its envelope sender.
    assert counters["notifications"] == 7
    assert counters["rejected"] == 0
    assert parser.snapshot()["queue"] == {}


def test_real_run_ids_and_join_keys():
    events = parse_text(EximParser(EximConfig()), (CASES / "mainlog-plain").read_text()).events
    rows = events.to_pylist()

    by_recipient = {(e["delivery_id"], e["recipient_id"], e["join_key"]) for e in rows}
    # Every message has a VERP envelope sender, the preferred key. Message a009 was sent without
    # a Message-ID (Exim added its own), but its VERP sender still gives its ids.
    assert by_recipient == {
        *(("c0ffee", f"a00{n}", "envelope_sender") for n in range(1, 10)),
        ("beef01", "b001", "envelope_sender"),
    }
    assert {e["queue_id"] for e in rows if e["recipient_id"] == "a002"} == {"1xZaZY-0004uW-08"}
    assert all("@" not in (e["recipient_domain"] or "") for e in rows)


def test_real_run_columns_of_one_bounce():
    events = parse_text(EximParser(EximConfig()), (CASES / "mainlog-plain").read_text()).events
    bounce = next(e for e in events.to_pylist() if e["recipient_id"] == "a002")

    assert bounce["event_type"] == "bounced"
    assert bounce["event_time"] == datetime(2026, 12, 4, 21, 12, 4, tzinfo=UTC)
    assert bounce["message_id"] == "c0ffee.a002.x1@mailer.example"
    assert bounce["recipient_domain"] == "inbox-a.example"
    assert bounce["smtp_code"] == 550
    assert bounce["dsn"] == "5.1.1"
    assert bounce["relay"] == "127.0.0.1[127.0.0.1]"
    assert bounce["diagnostic"] == ("SMTP error from remote mail server after RCPT TO:"
                                    "<*@inbox-a.example>: 550 5.1.1 <*@inbox-a.example>: "
                                    "user unknown")
    assert bounce["bounce_type"] == "hard"
    assert bounce["bounce_reason"] == "user_unknown"


def test_bare_expiry_takes_last_deferral():
    events = parse_text(EximParser(EximConfig()), (CASES / "mainlog-plain").read_text()).events
    expired = {e["recipient_domain"]: e for e in events.to_pylist()
               if e["event_type"] == "expired"}

    assert expired["inbox-b.example"]["smtp_code"] == 452
    assert expired["inbox-b.example"]["dsn"] == "4.2.2"
    assert expired["dead.example"]["diagnostic"] == "Connection refused"
    assert expired["dead.example"]["relay"] is None


def test_zoned_run_times_are_utc():
    events = parse_text(EximParser(EximConfig(timezone="America/New_York")),
                        (CASES / "mainlog-zoned").read_text()).events
    first = events.to_pylist()[0]

    # The line reads "2026-12-05 02:57:17.740 +0545".
    assert first["event_time"] == datetime(2026, 12, 4, 21, 12, 17, 740000, tzinfo=UTC)


SENT_LINE = (
    "{stamp} 1xZaZX-0004uL-34 => ok@inbox-a.example R=everything T=smtp_sink "
    'H=127.0.0.1 [127.0.0.1] C="250 2.0.0 Ok: queued"\n'
)


@pytest.mark.parametrize(
    ("timezone", "stamp", "expected"),
    [
        ("UTC", "2026-12-04 21:12:04", datetime(2026, 12, 4, 21, 12, 4, tzinfo=UTC)),
        ("Europe/Paris", "2026-12-04 21:12:04", datetime(2026, 12, 4, 20, 12, 4, tzinfo=UTC)),
        ("Europe/Paris", "2026-07-04 21:12:04", datetime(2026, 7, 4, 19, 12, 4, tzinfo=UTC)),
        ("Europe/Paris", "2026-12-04 21:12:04 +0000", datetime(2026, 12, 4, 21, 12, 4,
                                                               tzinfo=UTC)),
        ("UTC", "2026-12-05 02:57:04.123 +0545", datetime(2026, 12, 4, 21, 12, 4, 123000,
                                                          tzinfo=UTC)),
        ("UTC", "2026-12-04 11:42:04 -0930", datetime(2026, 12, 4, 21, 12, 4, tzinfo=UTC)),
        ("UTC", "2026-12-04 21:12:04.5", datetime(2026, 12, 4, 21, 12, 4, 500000, tzinfo=UTC)),
        ("UTC", "2026-12-04 21:12:04 [4242]", datetime(2026, 12, 4, 21, 12, 4, tzinfo=UTC)),
    ],
    ids=["utc", "paris-winter", "paris-summer", "offset-wins-over-zone", "millisec-plus-0545",
         "minus-0930", "fraction", "pid"],
)
def test_event_time(timezone, stamp, expected):
    result = parse_text(EximParser(EximConfig(timezone=timezone)), SENT_LINE.format(stamp=stamp))

    assert result.rejects.num_rows == 0
    assert result.events["event_time"].to_pylist() == [expected]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("2026-02-30 10:00:00 1xZaZX-0004uL-34 Completed", "invalid timestamp"),
        ("2026-13-04 10:00:00 1xZaZX-0004uL-34 Completed", "invalid timestamp"),
        ("Dec  4 21:12:04 mx exim[1]: 1xZaZX-0004uL-34 Completed",
         "not an Exim main log line: expected a YYYY-MM-DD HH:MM:SS timestamp"),
        ("garbage", "not an Exim main log line: expected a YYYY-MM-DD HH:MM:SS timestamp"),
    ],
    ids=["feb-30", "month-13", "syslog", "garbage"],
)
def test_bad_line_rejected(line, reason):
    result = parse_text(EximParser(EximConfig()), line + "\n")

    assert result.events.num_rows == 0
    assert result.rejects["reason"].to_pylist() == [reason]
    assert result.counters["rejected"] == 1


def test_lines_without_outcome_ignored():
    text = (
        "2026-12-04 21:11:20 Exim configuration error in line 12 of /etc/exim.conf:\n"
        "  option \"hosts_try_tls\" unknown\n"
        "2026-12-04 21:12:20 Start queue run: pid=19665\n"
        "2026-12-04 21:12:35 1xZaZY-0004vO-2I H=127.0.0.1 [127.0.0.1] Connection refused\n"
        "2026-12-04 21:12:50 1xZaZY-0004vO-2I == gus@dead.example R=dead T=smtp defer (-54): "
        "retry time not reached for any host for 'dead.example'\n"
        "2026-12-04 21:12:50 1xZaZY-0004uq-0m == full@b.example routing defer (-52): "
        "retry time not reached\n"
    )
    result = parse_text(EximParser(EximConfig()), text)

    assert result.events.num_rows == 0
    assert result.counters["rejected"] == 0
    assert result.counters["ignored"] == 6
    assert result.counters["retry_skipped"] == 2


def test_long_failure_period_is_expiry():
    text = ("2026-12-04 21:12:04 1xZaZY-0004vO-2I <= bounce-c0ffee-a007@mailer.example "
            "U=root P=local S=388 id=c0ffee.a007.x1@mailer.example\n"
            "2026-12-04 21:12:04 1xZaZY-0004vO-2I ** gus@dead.example R=dead T=smtp: "
            "retry time not reached for any host after a long failure period\n")
    event = parse_text(EximParser(EximConfig()), text).events.to_pylist()[0]

    assert event["event_type"] == "expired"
    assert event["recipient_id"] == "a007"


def test_original_address_is_the_recipient():
    text = ("2026-12-04 21:12:04 1xZaZX-0004uL-34 <= s@mailer.example U=root P=local S=1 "
            "id=c0ffee.a001.x1@mailer.example\n"
            "2026-12-04 21:12:04 1xZaZX-0004uL-34 => anna@mx.inbox-z.example (team@inbox-a.example) "
            '<team@inbox-a.example> R=everything T=smtp H=mx [10.0.0.1]:2525 C="250 Ok"\n')
    event = parse_text(EximParser(EximConfig()), text).events.to_pylist()[0]

    assert event["recipient_domain"] == "inbox-a.example"
    assert event["recipient_key"] == digest("team@inbox-a.example")
    assert event["relay"] == "mx[10.0.0.1]:2525"
    assert event["smtp_code"] == 250


def test_snapshot_holds_no_recipient_address():
    lines = (CASES / "mainlog-plain").read_text().splitlines(keepends=True)
    parser = EximParser(EximConfig())
    parse_text(parser, "".join(lines[:60]))
    dumped = json.dumps(parser.snapshot())

    assert parser.snapshot()["queue"]
    assert "full.carl" not in dumped
    assert "inbox-b.example" in dumped


@pytest.mark.parametrize(
    "state",
    [None, [], {"version": 99}, {"version": 1, "queue": {"x": {"message_id": 3}}},
     {"version": 1, "queue": [], "newest_s": "x"}],
    ids=["none", "list", "other-version", "bad-entry", "bad-types"],
)
def test_restore_bad_state_starts_empty(state):
    parser = EximParser(EximConfig())
    parser.restore(state)

    assert parser.snapshot()["queue"] == {}


SAMPLE_LINES = (CASES / "mainlog-zoned").read_text().splitlines()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")),
    st.sampled_from(SAMPLE_LINES),
    st.sampled_from(SAMPLE_LINES).map(lambda line: line[: len(line) // 2]),
), max_size=20))
def test_any_input_never_raises(lines):
    parser = EximParser(EximConfig())
    result = parse_text(parser, "".join(line + "\n" for line in lines))

    assert result.events.schema == schema.EVENT_SCHEMA
    assert result.events.num_rows + result.rejects.num_rows <= len(lines)
    json.dumps(parser.snapshot())
