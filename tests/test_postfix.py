"""Tests of the Postfix parser on real Postfix logs and on small excerpts made from them.

examples/logs/postfix/postfix.log.20261204-192356.gz and postfix.log are one real run of Postfix 3.7
(maillog_file written by postlogd, rotated once by `postfix logrotate`). expected_runA.json holds
the final outcome counts per delivery from that run's ground truth (see make_expected.py).

No real rsyslog output is in the test cases, so converted-rfc3164.log and converted-rfc3339.log
were made by hand from lines of the real log: the same messages with the timestamp rewritten in
rsyslog's traditional format (`Dec  4`) and in RFC 3339 with offsets -09:30, Z, +00:00 and +05:45.
multi-recipient.log and notification.log are lines of the real log with shorter addresses.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from clicktrail.agent import schema
from clicktrail.agent.lines import split_lines
from clicktrail.agent.parsers.base import SourceContext
from clicktrail.agent.parsers.postfix import PostfixParser
from hypothesis import given, settings
from hypothesis import strategies as st

CASES = Path(__file__).parent / "cases" / "postfix"
# The real run-A logs are bundled once, with the demo.
RUN_A = Path(__file__).parent.parent / "examples" / "logs" / "postfix"
MESSAGE_ID_PATTERN = r"^<?(?P<delivery_id>[0-9a-f]+)\.(?P<recipient_id>[0-9a-f]+)\."
SENDER_PATTERN = r"^bounce-(?P<delivery_id>[0-9a-f]+)-(?P<recipient_id>[0-9a-f]+)@"
OUTCOMES = ("sent", "bounced", "expired", "rejected")
MAX_LINE_BYTES = 65536


@dataclass
class PostfixConfig:
    timezone: str = "UTC"
    message_id_pattern: str | None = MESSAGE_ID_PATTERN
    envelope_sender_pattern: str | None = SENDER_PATTERN


def make_context(ingest: datetime = datetime(2026, 12, 5, tzinfo=UTC), path: str = "postfix.log",
                 generation: str = "0a") -> SourceContext:
    return SourceContext(host="mx1", source="mta", kind="postfix", path=path,
                         generation=generation, ingest_time=ingest)


def parse_text(parser: PostfixParser, text: str, ctx: SourceContext | None = None):
    batch, consumed, _, _ = split_lines(text.encode(), 0, MAX_LINE_BYTES)
    assert consumed == len(text.encode())
    return parser.parse(batch, ctx or make_context())


def feed_in_chunks(parser: PostfixParser, data: bytes, ctx: SourceContext, chunk_bytes: int,
                   restore_between: bool) -> tuple[PostfixParser, list, Counter]:
    """Feed a file through split_lines in chunks, as the pipeline does, collecting the output."""
    tables = []
    counters: Counter = Counter()
    offset = 0
    while offset < len(data):
        chunk = data[offset:offset + chunk_bytes]
        batch, consumed, _, _ = split_lines(chunk, offset, MAX_LINE_BYTES)
        assert consumed > 0, "a line is longer than the chunk"
        result = parser.parse(batch, ctx)
        tables.append(result.events)
        assert result.rejects.num_rows == 0
        counters.update(result.counters)
        offset += consumed
        if restore_between:
            state = json.loads(json.dumps(parser.snapshot()))
            parser = PostfixParser(PostfixConfig())
            parser.restore(state)
    return parser, tables, counters


def run_a_files() -> list[tuple[str, bytes]]:
    rotated = RUN_A / "postfix.log.20261204-192356.gz"
    return [
        (rotated.name, gzip.decompress(rotated.read_bytes())),
        ("postfix.log", (RUN_A / "postfix.log").read_bytes()),
    ]


@pytest.mark.parametrize("restore_between", [False, True], ids=["one-parser", "restored"])
@pytest.mark.parametrize("chunk_bytes", [3000, 8192])
def test_run_a_outcomes_match_ground_truth(chunk_bytes, restore_between):
    expected = json.loads((CASES / "expected_runA.json").read_text())["deliveries"]
    parser = PostfixParser(PostfixConfig())
    tables = []
    counters: Counter = Counter()
    for generation, (name, data) in enumerate(run_a_files()):
        ctx = make_context(path=name, generation=f"{generation + 1:x}")
        parser, file_tables, file_counters = feed_in_chunks(parser, data, ctx, chunk_bytes,
                                                            restore_between)
        tables += file_tables
        counters.update(file_counters)
    events = pa.concat_tables(tables)

    got = Counter(zip(events["delivery_id"].to_pylist(), events["event_type"].to_pylist(),
                      strict=True))
    deliveries = set(expected) | {d for d, _ in got if d is not None}
    for delivery in sorted(deliveries):
        for outcome in OUTCOMES:
            want = expected.get(delivery, {}).get(outcome, 0)
            assert got[(delivery, outcome)] == want, (delivery, outcome)

    assert got[(None, "sent")] == 0
    assert len(set(events["event_id"].to_pylist())) == events.num_rows
    # 157 non-delivery and 71 delay notifications, each delivered once to the bounce sink.
    assert counters["notifications"] == 228
    assert counters["rejected"] == 0
    assert counters["lines"] == 6496 + 2136


def test_run_a_state_empty_after_removed():
    parser = PostfixParser(PostfixConfig())
    for generation, (name, data) in enumerate(run_a_files()):
        feed_in_chunks(parser, data, make_context(path=name, generation=f"{generation + 1:x}"),
                       1 << 20, restore_between=False)

    # Only the 3 messages deleted with `postsuper -d ALL deferred` remain: Postfix 3.7 logs no
    # queue id for them.
    queue = parser.snapshot()["queue"]
    assert len(queue) == 3
    assert {tuple(entry["ids"]) for entry in queue.values()} == {("d3ad00", "a0001", None),
                                                                 ("d3ad00", "a0002", None),
                                                                 ("d3ad00", "a0003", None)}


def test_run_a_columns_of_one_bounce():
    parser = PostfixParser(PostfixConfig())
    text = (CASES / "converted-rfc3164.log").read_text()
    events = parse_text(parser, text).events.to_pylist()
    bounce = next(e for e in events if e["event_type"] == "bounced")

    assert bounce["delivery_id"] == "bb08d0"
    assert bounce["recipient_id"] == "10ca1"
    assert bounce["link_id"] is None
    assert bounce["queue_id"] == "D87C2176435"
    assert bounce["message_id"] == "<bb08d0.10ca1.x1@mailer.example.com>"
    assert bounce["recipient_domain"] == "localhost"
    assert bounce["dsn"] == "5.1.1"
    assert bounce["smtp_code"] is None
    assert bounce["relay"] == "local"
    assert bounce["diagnostic"] == 'unknown user: "nosuchuser.bb08d0"'
    assert bounce["bounce_type"] == "hard"
    assert bounce["bounce_reason"] == "user_unknown"
    assert bounce["join_key"] == "envelope_sender"


def test_noqueue_reject_joined_by_sender():
    parser = PostfixParser(PostfixConfig())
    text = (CASES / "converted-rfc3164.log").read_text()
    events = parse_text(parser, text).events.to_pylist()
    reject = next(e for e in events if e["event_type"] == "rejected")

    assert reject["delivery_id"] == "7d81d5"
    assert reject["recipient_id"] == "7da7c0"
    assert reject["queue_id"] is None
    assert reject["join_key"] == "envelope_sender"
    assert reject["smtp_code"] == 550
    assert reject["dsn"] == "5.1.2"
    assert reject["recipient_domain"] == "retired.example"
    assert reject["bounce_type"] == "hard"
    assert reject["bounce_reason"] == "invalid_domain"
    # The local part of the quoted recipient is not stored.
    assert "xavier" not in reject["diagnostic"]
    assert reject["diagnostic"].startswith("550 5.1.2 <*@retired.example>: Recipient address")


def expected_times(micros: list[int], seconds: list[int]) -> list[datetime]:
    return [datetime(2026, 12, 4, 19, 23, s, m, tzinfo=UTC) for s, m in zip(seconds, micros,
                                                                             strict=True)]


def test_rfc3339_offsets_read_as_utc():
    parser = PostfixParser(PostfixConfig(timezone="America/New_York"))
    events = parse_text(parser, (CASES / "converted-rfc3339.log").read_text()).events

    # The three events sit on lines 3 (+05:45), 8 (-09:30) and 11 (+05:45) of the excerpt.
    assert events["event_type"].to_pylist() == ["sent", "bounced", "rejected"]
    assert events["event_time"].to_pylist() == expected_times([53118, 53123, 53126], [11, 11, 14])
    assert events.schema.field("event_time").type == schema.TIMESTAMP


def test_rfc3164_space_padded_day():
    parser = PostfixParser(PostfixConfig(timezone="UTC"))
    events = parse_text(parser, (CASES / "converted-rfc3164.log").read_text()).events

    assert events["event_type"].to_pylist() == ["sent", "bounced", "rejected"]
    assert events["event_time"].to_pylist() == expected_times([0, 0, 0], [11, 11, 14])


SENT_LINE = (
    "{stamp} mx postfix/smtp[1]: 7107017642D: to=<a@b.example>, relay=none, delay=0, "
    "delays=0/0/0/0, dsn=2.0.0, status=sent (250 ok)\n"
)


@pytest.mark.parametrize(
    ("timezone", "stamp", "ingest", "expected"),
    [
        ("UTC", "Dec 04 19:23:05", datetime(2026, 12, 5, tzinfo=UTC),
         datetime(2026, 12, 4, 19, 23, 5, tzinfo=UTC)),
        ("UTC", "Dec  4 19:23:05", datetime(2026, 12, 5, tzinfo=UTC),
         datetime(2026, 12, 4, 19, 23, 5, tzinfo=UTC)),
        # Paris is UTC+1 in winter and UTC+2 in summer.
        ("Europe/Paris", "Jan 15 12:00:00", datetime(2026, 2, 1, tzinfo=UTC),
         datetime(2026, 1, 15, 11, 0, 0, tzinfo=UTC)),
        ("Europe/Paris", "Jul 15 12:00:00", datetime(2026, 8, 1, tzinfo=UTC),
         datetime(2026, 7, 15, 10, 0, 0, tzinfo=UTC)),
        # Kathmandu is UTC+05:45, with no DST.
        ("Asia/Kathmandu", "Dec 05 01:08:11", datetime(2026, 12, 5, tzinfo=UTC),
         datetime(2026, 12, 4, 19, 23, 11, tzinfo=UTC)),
        # A line of 31 December read on 1 January belongs to the year before.
        ("Europe/Paris", "Dec 31 23:59:59", datetime(2027, 1, 1, 0, 30, tzinfo=UTC),
         datetime(2026, 12, 31, 22, 59, 59, tzinfo=UTC)),
        # A line of 1 January read late on 31 December (UTC) is already next year in Paris.
        ("Europe/Paris", "Jan 01 00:10:00", datetime(2026, 12, 31, 23, 30, tzinfo=UTC),
         datetime(2026, 12, 31, 23, 10, 0, tzinfo=UTC)),
        # Within a day of ingest_time in the future: clock skew, still this year.
        ("UTC", "Dec 05 12:00:00", datetime(2026, 12, 5, tzinfo=UTC),
         datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)),
        # 29 February of 2028, read in January 2029.
        ("UTC", "Feb 29 10:00:00", datetime(2029, 1, 10, tzinfo=UTC),
         datetime(2028, 2, 29, 10, 0, 0, tzinfo=UTC)),
        ("UTC", "2026-12-04T19:34:32.053115+00:00", datetime(2026, 12, 5, tzinfo=UTC),
         datetime(2026, 12, 4, 19, 34, 32, 53115, tzinfo=UTC)),
        ("UTC", "2026-12-05T01:19:32.5+05:45", datetime(2026, 12, 5, tzinfo=UTC),
         datetime(2026, 12, 4, 19, 34, 32, 500000, tzinfo=UTC)),
        ("UTC", "2026-12-04T10:04:32.123456789-09:30", datetime(2026, 12, 5, tzinfo=UTC),
         datetime(2026, 12, 4, 19, 34, 32, 123456, tzinfo=UTC)),
        ("UTC", "2026-12-04T19:34:32Z", datetime(2026, 12, 5, tzinfo=UTC),
         datetime(2026, 12, 4, 19, 34, 32, tzinfo=UTC)),
    ],
    ids=["zero-padded", "space-padded", "paris-winter", "paris-summer", "kathmandu",
         "new-year-rollover", "new-year-ahead-of-utc", "skew", "leap-day", "rfc3339-utc",
         "rfc3339-plus-0545", "rfc3339-minus-0930-nanoseconds", "rfc3339-z"],
)
def test_event_time(timezone, stamp, ingest, expected):
    parser = PostfixParser(PostfixConfig(timezone=timezone))
    result = parse_text(parser, SENT_LINE.format(stamp=stamp), make_context(ingest=ingest))

    assert result.rejects.num_rows == 0
    assert result.events["event_time"].to_pylist() == [expected]


@pytest.mark.parametrize(
    ("stamp", "reason"),
    [
        ("Feb 30 10:00:00", "invalid timestamp"),
        ("Feb 29 10:00:00", "invalid timestamp"),  # neither 2026 nor 2025 is a leap year
        ("2026-13-04T19:34:32+00:00", "invalid timestamp"),
        ("2026-12-04 19:34:32", "not a syslog line: expected a timestamp, a host and a program"),
        ("Dez 04 19:23:05", "invalid timestamp"),
    ],
    ids=["feb-30", "feb-29-common-year", "month-13", "no-zone", "unknown-month"],
)
def test_bad_timestamp_rejected(stamp, reason):
    parser = PostfixParser(PostfixConfig())
    result = parse_text(parser, SENT_LINE.format(stamp=stamp), make_context())

    assert result.events.num_rows == 0
    assert result.rejects["reason"].to_pylist() == [reason]
    assert result.counters["rejected"] == 1


def test_non_postfix_lines_rejected_or_ignored():
    text = (
        "garbage that is no log line\n"
        "\n"
        "Dec 04 19:23:05 mx dovecot[12]: imap-login: Login: user=<a>\n"
        "Dec 04 19:23:05 mx postfix/master[23125]: daemon started -- version 3.7.11\n"
        "Dec 04 19:23:11 mx postfix/smtpd[23171]: connect from localhost[127.0.0.1]\n"
        "Dec 04 19:23:56 mx postfix/postsuper[1]: Deleted: 3 messages\n"
    )
    result = parse_text(PostfixParser(PostfixConfig()), text)

    assert result.events.num_rows == 0
    assert result.rejects["source_offset"].to_pylist() == [0, 28]
    assert result.counters["lines"] == 6
    assert result.counters["rejected"] == 2
    assert result.counters["ignored"] == 4
    assert result.counters["other_program"] == 1


MULTI_RECIPIENT = (CASES / "multi-recipient.log").read_text()


def test_expiry_closes_each_deferred_recipient():
    result = parse_text(PostfixParser(PostfixConfig()), MULTI_RECIPIENT)
    expired = [e for e in result.events.to_pylist() if e["event_type"] == "expired"]

    assert [e["recipient_domain"] for e in expired] == ["dead-mx.example", "inbox-c.example"]
    assert [e["bounce_reason"] for e in expired] == ["unreachable", "mailbox_full"]
    assert {e["bounce_type"] for e in expired} == {"soft"}
    assert {e["recipient_id"] for e in expired} == {"5eed02"}
    assert expired[0]["source_offset"] == expired[1]["source_offset"]
    assert expired[0]["event_id"] != expired[1]["event_id"]
    assert expired[1]["diagnostic"].endswith("<*@inbox-c.example>: mailbox full "
                                             "(in reply to RCPT TO command)")


def test_snapshot_holds_no_recipient_address():
    parser = PostfixParser(PostfixConfig())
    parse_text(parser, "".join(MULTI_RECIPIENT.splitlines(keepends=True)[:4]))
    dumped = json.dumps(parser.snapshot())

    assert "seed8" not in dumped
    assert "full.seed6" not in dumped
    assert "dead-mx.example" in dumped


def test_unknown_queue_id_gives_null_ids():
    line = ("Dec 04 19:23:11 mx postfix/smtp[1]: 4Yk8Xq2vLzz1: to=<x@inbox-a.example>, "
            "relay=127.0.0.1[127.0.0.1]:2525, delay=0.02, delays=0.01/0.01/0/0, dsn=2.0.0, "
            "status=sent (250 2.0.0 Ok)\n")
    event = parse_text(PostfixParser(PostfixConfig()), line).events.to_pylist()[0]

    assert event["queue_id"] == "4Yk8Xq2vLzz1"
    assert event["event_type"] == "sent"
    assert event["delivery_id"] is None
    assert event["recipient_id"] is None
    assert event["message_id"] is None
    assert event["join_key"] is None


def test_long_queue_id_joined():
    text = MULTI_RECIPIENT.replace("2B38717645F", "4Yk8Xq2vLzz1")
    events = parse_text(PostfixParser(PostfixConfig()), text).events

    assert set(events["queue_id"].to_pylist()) == {"4Yk8Xq2vLzz1"}
    assert set(events["delivery_id"].to_pylist()) == {"7d81d5"}


def test_notification_not_an_event():
    text = (CASES / "notification.log").read_text()
    parser = PostfixParser(PostfixConfig())
    result = parse_text(parser, text)

    assert result.events.num_rows == 0
    assert result.counters["notifications"] == 1
    assert result.counters["ignored"] == 3
    assert parser.snapshot()["queue"] == {}


def test_reused_queue_id_starts_new_message():
    # The first message's `removed` line is missing, so its state is still there when Postfix
    # reuses the short queue id.
    first = MULTI_RECIPIENT.splitlines(keepends=True)[:3]
    lines = MULTI_RECIPIENT.splitlines(keepends=True)
    second = [line.replace("5eed02", "abc123") for line in lines]
    events = parse_text(PostfixParser(PostfixConfig()), "".join(first + second)).events.to_pylist()
    expired = [e for e in events if e["event_type"] == "expired"]

    assert len(expired) == 2
    assert {e["recipient_id"] for e in expired} == {"abc123"}


def test_queue_entry_evicted_after_max_age():
    parser = PostfixParser(PostfixConfig())
    parse_text(parser, "".join(MULTI_RECIPIENT.splitlines(keepends=True)[:3]))
    later = SENT_LINE.format(stamp="Dec 12 19:23:05").replace("7107017642D", "7107017642E")
    parse_text(parser, later, make_context(ingest=datetime(2026, 12, 13, tzinfo=UTC)))

    assert list(parser.snapshot()["queue"]) == ["7107017642E"]


@pytest.mark.parametrize(
    "state",
    [None, [], {"version": 99}, {"version": 1, "queue": {"A1": {"message_id": 3}}}],
    ids=["none", "list", "other-version", "bad-entry"],
)
def test_restore_bad_state_starts_empty(state):
    parser = PostfixParser(PostfixConfig())
    parser.restore(state)

    assert parser.snapshot()["queue"] == {}
    assert parse_text(parser, MULTI_RECIPIENT).events.num_rows == 5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")),
    st.sampled_from(MULTI_RECIPIENT.splitlines()),
    st.sampled_from(MULTI_RECIPIENT.splitlines()).map(lambda line: line[: len(line) // 2]),
), max_size=20))
def test_any_input_never_raises(lines):
    parser = PostfixParser(PostfixConfig())
    text = "".join(line + "\n" for line in lines)
    result = parse_text(parser, text)

    assert result.events.schema == schema.EVENT_SCHEMA
    assert result.events.num_rows + result.rejects.num_rows <= 2 * len(lines) + 2
    json.dumps(parser.snapshot())


def test_ids_that_cannot_be_ids_are_not_used():
    parser = PostfixParser(PostfixConfig(
        message_id_pattern=r"^<(?P<delivery_id>[^.]+)\.(?P<recipient_id>[^@]+)@",
        envelope_sender_pattern=None))
    text = (
        "Dec 04 19:23:11 mx postfix/cleanup[1]: 7107017642D: message-id=<..%2F..\\x.<script>@e>\n"
        "Dec 04 19:23:11 mx postfix/qmgr[2]: 7107017642D: from=<s@e>, size=1, nrcpt=1 (queue active)\n"
        "Dec 04 19:23:11 mx postfix/smtp[3]: 7107017642D: to=<a@b.example>, relay=r, delay=1, "
        "delays=0/0/0/0, dsn=2.0.0, status=sent (250 ok)\n"
    )
    events = parse_text(parser, text).events.to_pylist()

    assert [(e["event_type"], e["delivery_id"], e["recipient_id"]) for e in events] == [
        ("sent", None, None)]
