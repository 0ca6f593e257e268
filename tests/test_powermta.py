"""Tests of the PowerMTA accounting file parser.

No PowerMTA was available to write a real accounting file, so tests/cases/powermta/
acct-2026-12-04.csv follows the format that PowerMTA's user guide documents (see the README
there): a header row, a second header after a reload with another column order, RFC 4180
quoting with commas and doubled quotes in dsnDiag, and times with offsets and as Unix time.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from clicktrail.agent import schema
from clicktrail.agent.config import ConfigError, load_config
from clicktrail.agent.lines import split_lines
from clicktrail.agent.parsers import make_parser
from clicktrail.agent.parsers.base import SourceContext
from clicktrail.agent.parsers.powermta import PowerMtaParser
from hypothesis import given, settings
from hypothesis import strategies as st

CASES = Path(__file__).parent / "cases" / "powermta"
ACCOUNTING = (CASES / "acct-2026-12-04.csv").read_text()
MESSAGE_ID_PATTERN = r"^<?(?P<delivery_id>[0-9a-f]+)\.(?P<recipient_id>[0-9a-f]+)\."
SENDER_PATTERN = r"^bounce-(?P<delivery_id>[0-9a-f]+)-(?P<recipient_id>[0-9a-f]+)@"
JOB_ID_PATTERN = r"^job-(?P<delivery_id>[0-9a-f]+)$"
MAX_LINE_BYTES = 65536


@dataclass
class PowerMtaConfig:
    timezone: str = "UTC"
    message_id_pattern: str | None = MESSAGE_ID_PATTERN
    envelope_sender_pattern: str | None = SENDER_PATTERN
    job_id_pattern: str | None = JOB_ID_PATTERN


def make_context() -> SourceContext:
    return SourceContext(host="mx1", source="pmta", kind="powermta", path="acct.csv",
                         generation="0a", ingest_time=datetime(2026, 12, 5, tzinfo=UTC))


def parse_text(parser: PowerMtaParser, text: str):
    batch, consumed, _, _ = split_lines(text.encode(), 0, MAX_LINE_BYTES)
    assert consumed == len(text.encode())
    return parser.parse(batch, make_context())


# (recipient, event_type, bounce_type, bounce_reason, delivery_id, recipient_id, join_key), in
# file order, as the record type, bounceCat and dsnDiag of each row mean.
EXPECTED = [
    ("ok.anna@inbox-a.example", "sent", None, None, "c0ffee", "a001", "envelope_sender"),
    ("unknown.bob@inbox-a.example", "bounced", "hard", "user_unknown", "c0ffee", "a002",
     "envelope_sender"),
    ("full.carl@inbox-b.example", "deferred", "soft", "mailbox_full", "c0ffee", "a003",
     "envelope_sender"),
    ("greylist.fay@inbox-b.example", "deferred", "ignored", "refused", "c0ffee", "a006",
     "envelope_sender"),
    ("blocked.dora@inbox-b.example", "bounced", "hard", "refused", "c0ffee", "a004",
     "envelope_sender"),
    ("full.carl@inbox-b.example", "expired", "soft", "mailbox_full", "c0ffee", "a003",
     "envelope_sender"),
    ("ok.hal@inbox-c.example", "sent", None, None, "c0ffee", "a008", "envelope_sender"),
    ("disabled.emil@inbox-a.example", "bounced", "hard", "account_disabled", "c0ffee", "a005",
     "envelope_sender"),
    ("gus@dead.example", "bounced", "hard", "unreachable", "c0ffee", "a007", "envelope_sender"),
    ("ok.anna@inbox-a.example", "complaint", None, None, "c0ffee", None, "header"),
    ("ok.ida@inbox-c.example", "bounced", "hard", "user_unknown", "c0ffee", "a008",
     "envelope_sender"),
    ("ok.kim@inbox-a.example", "deferred", "soft", "mailbox_full", "c0ffee", "a009",
     "envelope_sender"),
    ("ok.lea@inbox-d.example", "sent", None, None, "beef01", "b001", "envelope_sender"),
]


def domain_and_outcome(events: pa.Table) -> list[tuple]:
    return [(e["recipient_domain"], e["event_type"], e["bounce_type"], e["bounce_reason"],
             e["delivery_id"], e["recipient_id"], e["join_key"]) for e in events.to_pylist()]


def expected_rows() -> list[tuple]:
    return [(address.split("@")[1], *rest) for address, *rest in EXPECTED]


@pytest.mark.parametrize("chunk_bytes", [700, 1 << 20])
def test_accounting_outcomes_per_recipient(chunk_bytes):
    data = ACCOUNTING.encode()
    parser = PowerMtaParser(PowerMtaConfig())
    tables, rejects = [], []
    offset = 0
    while offset < len(data):
        batch, consumed, _, _ = split_lines(data[offset:offset + chunk_bytes], offset,
                                            MAX_LINE_BYTES)
        assert consumed > 0, "a line is longer than the chunk"
        result = parser.parse(batch, make_context())
        tables.append(result.events)
        rejects += result.rejects["reason"].to_pylist()
        offset += consumed
        # The header in force must survive a restart between any two batches.
        state = json.loads(json.dumps(parser.snapshot()))
        parser = PowerMtaParser(PowerMtaConfig())
        parser.restore(state)
    events = pa.concat_tables(tables)

    assert domain_and_outcome(events) == expected_rows()
    assert rejects == ["expected 11 fields as in the header row, got 4",
                       "unknown record type 'x'",
                       "invalid timeLogged '2026-12-32 19:43:02+0000'"]


def test_accounting_counters():
    result = parse_text(PowerMtaParser(PowerMtaConfig()), ACCOUNTING)

    assert result.counters["lines"] == 20
    assert result.counters["header_rows"] == 2
    assert result.counters["received"] == 1
    assert result.counters["events"] == 13
    assert result.counters["rejected"] == 3
    # The received record and the remote status "delivered" make no event.
    assert result.counters["ignored"] == 2


def test_recipient_keys_are_digests():
    events = parse_text(PowerMtaParser(PowerMtaConfig()), ACCOUNTING).events

    keys = [hashlib.blake2b(address.encode(), digest_size=8).hexdigest()
            for address, *_ in EXPECTED]
    assert events["recipient_key"].to_pylist() == keys


def test_quoted_diagnostic_with_commas_and_quotes():
    events = parse_text(PowerMtaParser(PowerMtaConfig()), ACCOUNTING).events.to_pylist()
    blocked = events[4]

    assert blocked["diagnostic"] == (
        '554 5.7.1 Service unavailable; Client host [198.51.100.5] blocked using '
        'zen.spamhaus.org; "listed", see https://www.spamhaus.org/query/ip/198.51.100.5')
    assert blocked["smtp_code"] == 554
    assert blocked["dsn"] == "5.7.1"
    assert blocked["relay"] == "mx.inbox-b.example (192.0.2.20)"


def test_local_part_not_in_diagnostic():
    events = parse_text(PowerMtaParser(PowerMtaConfig()), ACCOUNTING).events.to_pylist()

    assert events[1]["diagnostic"] == ("550 5.1.1 <*@inbox-a.example>: Recipient address "
                                       "rejected: User unknown in virtual mailbox table")


def test_times_with_offsets_and_unix_time():
    events = parse_text(PowerMtaParser(PowerMtaConfig()), ACCOUNTING).events
    times = events["event_time"].to_pylist()

    assert times[0] == datetime(2026, 12, 4, 19, 23, 11, tzinfo=UTC)
    assert times[6] == datetime(2026, 12, 4, 19, 0, 1, tzinfo=UTC)  # +0100
    assert times[7] == datetime(2026, 12, 4, 20, 0, 2, tzinfo=UTC)  # -0100
    assert times[12] == datetime(2026, 12, 4, 19, 23, 11, tzinfo=UTC)  # 1796412191


@pytest.mark.parametrize(
    ("timezone", "stamp", "expected"),
    [
        ("UTC", "2026-12-04 19:23:11+0000", datetime(2026, 12, 4, 19, 23, 11, tzinfo=UTC)),
        ("UTC", "2026-12-04T19:23:11+05:45", datetime(2026, 12, 4, 13, 38, 11, tzinfo=UTC)),
        ("UTC", "2026-12-04 19:23:11.25Z", datetime(2026, 12, 4, 19, 23, 11, 250000,
                                                    tzinfo=UTC)),
        ("Europe/Paris", "2026-12-04 19:23:11", datetime(2026, 12, 4, 18, 23, 11, tzinfo=UTC)),
        ("UTC", "1796412191", datetime(2026, 12, 4, 19, 23, 11, tzinfo=UTC)),
    ],
    ids=["plus-0000", "rfc3339-offset", "fraction-z", "no-offset-paris", "unix-time"],
)
def test_time_logged(timezone, stamp, expected):
    text = f"type,timeLogged,rcpt\nd,{stamp},a@b.example\n"
    events = parse_text(PowerMtaParser(PowerMtaConfig(timezone=timezone)), text).events

    assert events["event_time"].to_pylist() == [expected]


def test_record_before_header_rejected():
    result = parse_text(PowerMtaParser(PowerMtaConfig()), "d,2026-12-04 19:23:11+0000,a@b\n")

    assert result.rejects["reason"].to_pylist() == [
        "no header row before this record: expected a line starting with 'type,'"]


def test_unterminated_quote_rejected():
    text = 'type,timeLogged,rcpt,dsnDiag\nd,2026-12-04 19:23:11+0000,a@b.example,"smtp;250 ok\n'
    result = parse_text(PowerMtaParser(PowerMtaConfig()), text)

    assert result.events.num_rows == 0
    assert result.rejects["reason"].to_pylist()[0].startswith("invalid CSV: ")


@pytest.mark.parametrize(
    "state",
    [None, [], {"version": 2, "header": ["type"]}, {"version": 1, "header": [1, 2]}],
    ids=["none", "list", "other-version", "bad-header"],
)
def test_restore_bad_state_needs_header(state):
    parser = PowerMtaParser(PowerMtaConfig())
    parser.restore(state)

    assert parser.snapshot() == {"version": 1, "header": None}


def test_job_id_pattern_needs_delivery_id():
    with pytest.raises(ValueError, match="job_id_pattern must have the named group delivery_id"):
        PowerMtaParser(PowerMtaConfig(job_id_pattern=r"^job-(?P<recipient_id>\w+)$"))


def write_config(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "clicktrail.toml"
    path.write_text(textwrap.dedent("""\
        [agent]
        state_dir = "state"
        [store]
        url = "store"
        [[sources]]
        name = "pmta"
        paths = ["/var/log/pmta/acct-*.csv"]
        """) + source)
    return path


def test_config_job_id_pattern_loaded(tmp_path):
    path = write_config(tmp_path, f"kind = \"powermta\"\njob_id_pattern = '{JOB_ID_PATTERN}'\n")
    source = load_config(path).sources[0]

    assert source.job_id_pattern == JOB_ID_PATTERN
    assert isinstance(make_parser(source), PowerMtaParser)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("kind = \"powermta\"\njob_id_pattern = '^job-(?P<recipient_id>.+)$'\n",
         "sources[0].job_id_pattern: missing the named group delivery_id in "
         "'^job-(?P<recipient_id>.+)$'"),
        ("kind = \"postfix\"\njob_id_pattern = '^job-(?P<delivery_id>.+)$'\n",
         "sources[0].job_id_pattern: not used by kind 'postfix', only by 'powermta'; remove it"),
    ],
    ids=["no-delivery-id", "other-kind"],
)
def test_config_job_id_pattern_invalid(tmp_path, source, message):
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, source))

    assert str(info.value).endswith(message)


SAMPLE_LINES = ACCOUNTING.splitlines()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")),
    st.sampled_from(SAMPLE_LINES),
    st.sampled_from(SAMPLE_LINES).map(lambda line: line[: len(line) // 2]),
), max_size=20))
def test_any_input_never_raises(lines):
    parser = PowerMtaParser(PowerMtaConfig())
    result = parse_text(parser, "".join(line + "\n" for line in lines))

    assert result.events.schema == schema.EVENT_SCHEMA
    assert result.events.num_rows + result.rejects.num_rows <= len(lines)
    json.dumps(parser.snapshot())
