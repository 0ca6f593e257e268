"""Tests of the KumoMTA log record parser.

No KumoMTA was available to write real logs, so tests/cases/kumomta/records.jsonl was made by
make_records.py there, following the log record format that KumoMTA documents (the record
types, response with enhanced_code, Unix-second timestamps, bounce_classification, meta and
headers). KumoMTA writes its logs as zstd-compressed segments, which the tests build from those
records, with two zstd frames in one file.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import zstandard
from click.testing import CliRunner
from clicktrail.agent import schema
from clicktrail.agent.cli import main
from clicktrail.agent.config import ConfigError, load_config
from clicktrail.agent.lines import split_lines
from clicktrail.agent.parsers import make_parser
from clicktrail.agent.parsers.base import SourceContext
from clicktrail.agent.parsers.kumomta import KumoMtaParser, decompress_segment
from hypothesis import given, settings
from hypothesis import strategies as st

from . import numbered

CASES = Path(__file__).parent / "cases" / "kumomta"
RECORDS = (CASES / "records.jsonl").read_text()
MESSAGE_ID_PATTERN = r"^<?(?P<delivery_id>[0-9a-f]+)\.(?P<recipient_id>[0-9a-f]+)\."
SENDER_PATTERN = r"^bounce-(?P<delivery_id>[0-9a-f]+)-(?P<recipient_id>[0-9a-f]+)@"
META_IDS = (("delivery_id", "campaign"), ("recipient_id", "subscriber"))
MAX_LINE_BYTES = 65536


@dataclass
class KumoConfig:
    timezone: str = "UTC"
    message_id_pattern: str | None = MESSAGE_ID_PATTERN
    envelope_sender_pattern: str | None = SENDER_PATTERN
    meta_ids: tuple[tuple[str, str], ...] = META_IDS


def make_context() -> SourceContext:
    return SourceContext(host="mx1", source="kumo", kind="kumomta", path="segment",
                         generation="0a", ingest_time=datetime(2026, 12, 5, tzinfo=UTC))


def parse_bytes(parser: KumoMtaParser, data: bytes):
    batch, consumed, _, _ = split_lines(data, 0, MAX_LINE_BYTES)
    assert consumed == len(data)
    return parser.parse(batch, make_context())


# (recipient, event_type, bounce_type, bounce_reason, delivery_id, recipient_id, join_key), in
# record order, as the record type, bounce_classification and response of each record mean.
EXPECTED = [
    ("ok.anna@inbox-a.example", "sent", None, None, "c0ffee", "a001", "envelope_sender"),
    ("unknown.bob@inbox-a.example", "bounced", "hard", "user_unknown", "c0ffee", "a002",
     "envelope_sender"),
    ("full.carl@inbox-b.example", "deferred", "soft", "mailbox_full", "c0ffee", "a003",
     "envelope_sender"),
    ("greylist.fay@inbox-b.example", "deferred", "ignored", "refused", "c0ffee", "a006",
     "envelope_sender"),
    # An Expiration record gives only KumoMTA's own 5.4.7 reply, not the last deferral's.
    ("full.carl@inbox-b.example", "expired", "soft", "unreachable", "c0ffee", "a003",
     "envelope_sender"),
    ("blocked.dora@inbox-b.example", "bounced", "hard", "refused", "c0ffee", "a004",
     "envelope_sender"),
    ("disabled.emil@inbox-a.example", "bounced", "hard", "refused", "c0ffee", "a005",
     "envelope_sender"),
    ("ok.ida@inbox-c.example", "bounced", "hard", "user_unknown", "c0ffee", "a008",
     "envelope_sender"),
    ("ok.hal@inbox-c.example", "sent", None, None, "beef01", "b002", "meta"),
    ("ok.jan@inbox-c.example", "sent", None, None, "beef01", "b002", "meta"),
    ("ok.anna@inbox-a.example", "complaint", None, None, "c0ffee", "a001", "envelope_sender"),
]


def digest(address: str) -> str:
    return hashlib.blake2b(address.lower().encode(), digest_size=8).hexdigest()


def outcomes(events) -> list[tuple]:
    return [(e["recipient_key"], e["event_type"], e["bounce_type"], e["bounce_reason"],
             e["delivery_id"], e["recipient_id"], e["join_key"]) for e in events.to_pylist()]


def expected_outcomes() -> list[tuple]:
    return [(digest(address), *rest) for address, *rest in EXPECTED]


def write_segment(path: Path, text: str) -> None:
    """Write text as a KumoMTA-style segment: zstd, here in two frames."""
    lines = text.splitlines(keepends=True)
    half = len(lines) // 2
    compressor = zstandard.ZstdCompressor()
    path.write_bytes(compressor.compress("".join(lines[:half]).encode())
                     + compressor.compress("".join(lines[half:]).encode()))


def test_segment_outcomes_per_recipient(tmp_path):
    segment = tmp_path / "20261204-192311"
    write_segment(segment, RECORDS)
    data = decompress_segment(segment)
    result = parse_bytes(KumoMtaParser(KumoConfig()), data)

    assert data == RECORDS.encode()
    assert outcomes(result.events) == expected_outcomes()
    assert result.rejects["reason"].to_pylist() == [
        "invalid JSON: expected one log record per line",
        "not a log record: expected a JSON object",
        "invalid timestamp 'yesterday'",
        "unknown record type 'Bogus'",
    ]


def test_record_counters():
    result = parse_bytes(KumoMtaParser(KumoConfig()), RECORDS.encode())

    assert result.counters["lines"] == 17
    assert result.counters["received"] == 1
    assert result.counters["events"] == 11
    assert result.counters["rejected"] == 4
    # The Rejection and Delay records make no event.
    assert result.counters["ignored"] == 2


def test_columns_of_one_bounce():
    events = parse_bytes(KumoMtaParser(KumoConfig()), RECORDS.encode()).events.to_pylist()
    bounce = events[1]

    assert bounce["event_time"] == datetime(2026, 12, 4, 19, 23, 12, tzinfo=UTC)
    assert bounce["queue_id"] == "1d98076abbbc11ed940250ebf67f9302"
    assert bounce["message_id"] == "<c0ffee.a002.x1@mailer.example>"
    assert bounce["recipient_domain"] == "inbox-a.example"
    assert bounce["smtp_code"] == 550
    assert bounce["dsn"] == "5.1.1"
    assert bounce["diagnostic"] == "<*@inbox-a.example>: user unknown"
    assert bounce["relay"] == "mx.inbox-a.example[192.0.2.10]"


def test_list_recipient_gives_one_event_each():
    events = parse_bytes(KumoMtaParser(KumoConfig()), RECORDS.encode()).events.to_pylist()
    hal, jan = events[8], events[9]

    assert hal["source_offset"] == jan["source_offset"]
    assert hal["event_id"] != jan["event_id"]
    assert jan["event_id"].endswith(":1")


def test_segment_with_one_frame(tmp_path):
    segment = tmp_path / "one-frame"
    segment.write_bytes(zstandard.ZstdCompressor().compress(RECORDS.encode()))

    assert decompress_segment(segment) == RECORDS.encode()


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (1796412191, datetime(2026, 12, 4, 19, 23, 11, tzinfo=UTC)),
        (1796412191.5, datetime(2026, 12, 4, 19, 23, 11, 500000, tzinfo=UTC)),
        ("2026-12-04T19:23:11Z", datetime(2026, 12, 4, 19, 23, 11, tzinfo=UTC)),
        ("2026-12-05T01:08:11+05:45", datetime(2026, 12, 4, 19, 23, 11, tzinfo=UTC)),
    ],
    ids=["unix-seconds", "fraction", "rfc3339-z", "rfc3339-offset"],
)
def test_timestamp(timestamp, expected):
    line = json.dumps({"type": "Delivery", "recipient": "a@b.example", "timestamp": timestamp})
    events = parse_bytes(KumoMtaParser(KumoConfig()), (line + "\n").encode()).events

    assert events["event_time"].to_pylist() == [expected]


@pytest.mark.parametrize(
    "timestamp",
    [None, True, "2026-12-04T19:23:11", 10**20, float("nan")],
    ids=["missing", "bool", "no-offset", "too-large", "nan"],
)
def test_bad_timestamp_rejected(timestamp):
    line = json.dumps({"type": "Delivery", "recipient": "a@b.example", "timestamp": timestamp})
    result = parse_bytes(KumoMtaParser(KumoConfig()), (line + "\n").encode())

    assert result.events.num_rows == 0
    assert result.rejects["reason"].to_pylist()[0].startswith("invalid timestamp ")


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"campaign": "beef01", "subscriber": 42}, ("beef01", "42", "meta")),
        ({"campaign": "../etc", "subscriber": "b002"}, (None, None, None)),
        ({"subscriber": "b002"}, (None, None, None)),
        ({"campaign": ["beef01"]}, (None, None, None)),
    ],
    ids=["integer-id", "invalid-id", "no-delivery-id", "list-value"],
)
def test_meta_ids(meta, expected):
    line = json.dumps({"type": "Delivery", "recipient": "a@b.example", "timestamp": 1796412191,
                       "sender": "news@mailer.example", "meta": meta})
    event = parse_bytes(KumoMtaParser(KumoConfig()), (line + "\n").encode()).events.to_pylist()[0]

    assert (event["delivery_id"], event["recipient_id"], event["join_key"]) == expected


def test_meta_ids_need_delivery_id():
    with pytest.raises(ValueError, match="meta_ids must name delivery_id"):
        KumoMtaParser(KumoConfig(meta_ids=(("recipient_id", "subscriber"),)))


def write_config(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "clicktrail.toml"
    path.write_text(textwrap.dedent("""\
        [agent]
        state_dir = "state"
        [store]
        url = "store"
        [[sources]]
        name = "kumo"
        paths = ["/var/log/kumomta/*"]
        """) + source)
    return path


def test_config_meta_ids_loaded(tmp_path):
    path = write_config(tmp_path, 'kind = "kumomta"\n'
                        'meta_ids = { recipient_id = "subscriber", delivery_id = "campaign" }\n')
    source = load_config(path).sources[0]

    assert source.meta_ids == META_IDS
    assert isinstance(make_parser(source), KumoMtaParser)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('kind = "kumomta"\nmeta_ids = { recipient_id = "subscriber" }\n',
         "sources[0].meta_ids.delivery_id: missing; meta_ids needs at least delivery_id"),
        ('kind = "kumomta"\nmeta_ids = { delivery_id = "campaign", job = "x" }\n',
         "sources[0].meta_ids.job: unknown id name; expected one of: delivery_id, "
         "recipient_id, link_id"),
        ('kind = "kumomta"\nmeta_ids = { delivery_id = 3 }\n',
         "sources[0].meta_ids.delivery_id: expected a non-empty string, got 3"),
        ('kind = "kumomta"\nmeta_ids = "campaign"\n',
         "sources[0].meta_ids: expected a table, got 'campaign'"),
        ('kind = "exim"\nmeta_ids = { delivery_id = "campaign" }\n',
         "sources[0].meta_ids: not used by kind 'exim', only by 'kumomta'; remove it"),
    ],
    ids=["no-delivery-id", "unknown-name", "not-a-string", "not-a-table", "other-kind"],
)
def test_config_meta_ids_invalid(tmp_path, source, message):
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, source))

    assert str(info.value).endswith(message)


SAMPLE_LINES = RECORDS.splitlines()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")),
    st.sampled_from(SAMPLE_LINES),
    st.sampled_from(SAMPLE_LINES).map(lambda line: line[: len(line) // 2]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                 lambda children: st.lists(children, max_size=3)
                 | st.dictionaries(st.sampled_from(["type", "recipient", "timestamp", "response",
                                                    "meta", "headers", "feedback_report",
                                                    "code", "enhanced_code", "class"]),
                                   children, max_size=5),
                 max_leaves=12).map(json.dumps),
), max_size=20))
def test_any_input_never_raises(lines):
    parser = KumoMtaParser(KumoConfig())
    data = "".join(line + "\n" for line in lines).encode()
    result = parse_bytes(parser, data)

    assert result.events.schema == schema.EVENT_SCHEMA
    assert result.rejects.num_rows <= len(lines)


def test_agent_reads_zstd_segments_without_suffix(tmp_path):
    """The agent reads KumoMTA's zstd segments, several frames each, recognised by their magic."""
    lines = (CASES / "records.jsonl").read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    compressor = zstandard.ZstdCompressor()
    segment = tmp_path / "logs" / "20261204-192300"
    numbered.write_config(tmp_path)
    segment.write_bytes(compressor.compress(b"".join(lines[:half]))
                        + compressor.compress(b"".join(lines[half:])))
    config = tmp_path / "clicktrail.toml"
    text = config.read_text().replace('kind = "access_log"', 'kind = "kumomta"')
    text = text.replace(f'paths = ["{tmp_path / "logs" / "t.log*"}"]',
                        f'paths = ["{tmp_path / "logs" / "2026*"}"]')
    text = text.replace('routes = "generic"', "envelope_sender_pattern = "
                        "'^bounce-(?P<delivery_id>[0-9a-f]+)-(?P<recipient_id>[0-9a-f]+)@'")
    config.write_text(text)

    runner = CliRunner()
    first = runner.invoke(main, ["once", "--config", str(config)])
    second = runner.invoke(main, ["once", "--config", str(config)])

    expected = parse_bytes(KumoMtaParser(KumoConfig(meta_ids=())), b"".join(lines)).events
    stored = ds.dataset(tmp_path / "store" / "events", format="parquet",
                        partitioning="hive").to_table()
    assert first.exit_code == 0, first.output
    assert "0 event(s)" in second.output
    assert stored.num_rows == expected.num_rows > 0
