"""The access-log parser on lines written by Apache httpd 2.4 (Debian 12, TZ=Europe/Paris)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
from collections import Counter
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest
from clicktrail.agent import schema
from clicktrail.agent.config import load_config
from clicktrail.agent.lines import split_lines
from clicktrail.agent.parsers.access_log import AccessLogParser, normalise_target
from clicktrail.agent.parsers.base import SourceContext
from clicktrail.agent.routes import route_from_table
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import CASES, EXAMPLES

DEMO = load_config(EXAMPLES / "clicktrail.toml")
RICH_SOURCE = DEMO.sources[0]
COMBINED_SOURCE = dataclasses.replace(RICH_SOURCE, log_format="combined")
CONTEXT = SourceContext(host="mx1", source="tracking", kind="access_log", path="/var/log/t.log",
                        generation="ab12", ingest_time=datetime(2026, 12, 5, tzinfo=UTC))


def parse(lines: list[str], source=COMBINED_SOURCE):
    data = "".join(line + "\n" for line in lines).encode()
    batch, consumed, _, _ = split_lines(data, 0, 65536)
    assert consumed == len(data)
    return AccessLogParser(source).parse(batch, CONTEXT)


def line(request: str, status: int = 200, when: str = "04/Dec/2026:20:20:32 +0100",
         agent: str = "Mozilla/5.0") -> str:
    return f'127.0.0.9 - - [{when}] "{request}" {status} 324 "-" "{agent}"'


def test_open_click_unsubscribe_mirror():
    result = parse([
        line("GET /o/7d81d5.2ace6.gif HTTP/1.1"),
        line("GET /r/?id=h3440b0,b0571,b HTTP/1.1", 302),
        line("POST /u/YmIwOGQwOmNhMjVl HTTP/1.1"),
        line("HEAD /m/3440b0.8b39f HTTP/1.1"),
    ])
    rows = result.events.to_pylist()

    assert [(r["event_type"], r["delivery_id"], r["recipient_id"], r["link_id"]) for r in rows] == [
        ("open", "7d81d5", "2ace6", None),
        ("click", "3440b0", "b0571", "b"),
        ("unsubscribe", "bb08d0", "ca25e", None),
        ("mirror", "3440b0", "8b39f", None),
    ]
    assert [r["http_method"] for r in rows] == ["GET", "GET", "POST", "HEAD"]
    assert [r["http_status"] for r in rows] == [200, 302, 200, 200]
    assert result.rejects.num_rows == 0


@pytest.mark.parametrize(
    ("when", "utc"),
    [
        ("04/Dec/2026:20:20:32 +0100", datetime(2026, 12, 4, 19, 20, 32, tzinfo=UTC)),
        ("04/Dec/2026:20:20:32 +0000", datetime(2026, 12, 4, 20, 20, 32, tzinfo=UTC)),
        ("05/Dec/2026:01:35:32 +0545", datetime(2026, 12, 4, 19, 50, 32, tzinfo=UTC)),
        ("04/Dec/2026:10:50:32 -0930", datetime(2026, 12, 4, 20, 20, 32, tzinfo=UTC)),
        ("01/Jan/2027:00:30:00 +1400", datetime(2026, 12, 31, 10, 30, 0, tzinfo=UTC)),
        ("31/Dec/2026:23:59:59 -1200", datetime(2027, 1, 1, 11, 59, 59, tzinfo=UTC)),
    ],
    ids=["paris", "utc", "nepal-minutes", "marquesas-minutes", "kiribati", "baker-island"],
)
def test_event_time_is_exact_utc(when, utc):
    result = parse([line("GET /o/7d81d5.2ace6.gif HTTP/1.1", when=when)])

    assert result.events.column("event_time").to_pylist() == [utc]


def test_only_2xx_3xx_become_events():
    result = parse([
        line("GET /o/7d81d5.2ace6.gif HTTP/1.1", 200),
        line("GET /o/7d81d5.2ace6.gif HTTP/1.1", 206),
        line("GET /r/?id=h3440b0,b0571,b HTTP/1.1", 302),
        line("GET /o/7d81d5.2ace6.gif HTTP/1.1", 304),
        line("GET /o/7d81d5.2ace6.gif HTTP/1.1", 404),
        line("POST /u/YmIwOGQwOmNhMjVl HTTP/1.1", 400),
        line("GET /r/?id=h3440b0,b0571,b HTTP/1.1", 500),
    ])

    assert result.events.column("http_status").to_pylist() == [200, 206, 302, 304]
    assert result.counters["not_successful"] == 3


def test_methods_outside_route_are_not_events():
    result = parse([line("OPTIONS /o/7d81d5.11eac9.gif HTTP/1.1"),
                    line("PUT /o/3440b0.75aed.gif HTTP/1.1")])

    assert result.events.num_rows == 0
    assert result.counters["not_routed"] == 2


def test_undecodable_token_is_rejected_not_stored():
    result = parse([line("GET /o/null.gif HTTP/1.1"), line("GET /r/Z2FyYmFnZS01Ng HTTP/1.1", 302),
                    line("GET /o/YmIwOGQwOmU0OWJh.gif HTTP/1.1")])
    rejects = result.rejects.to_pylist()

    assert result.events.column("recipient_id").to_pylist() == ["e49ba"]
    assert [r["reason"] for r in rejects] == [
        "token does not decode: token is not UTF-8 after decoding",
        "token does not decode: token has 1 field(s) after decoding, expected 3 separated by ':'",
    ]
    assert [r["source_offset"] for r in rejects] == [0, len(line("GET /o/null.gif HTTP/1.1")) + 1]
    assert rejects[0]["source_path"] == "/var/log/t.log"


def test_unparsable_line_is_rejected_and_reading_goes_on():
    result = parse(["garbage that is no log line", line("GET /o/7d81d5.2ace6.gif HTTP/1.1"),
                    line("GET /o/7d81d5.2ace6.gif HTTP/1.1", when="99/Foo/2026:20:20:32 +0100")])

    assert result.events.num_rows == 1
    assert [r["reason"] for r in result.rejects.to_pylist()] == [
        "line does not match log_format", "invalid time field"]


@pytest.mark.parametrize(
    ("logged_request", "ids"),
    [
        ("GET /o/YmIwOGQwOmU0OWJh.gif", ("bb08d0", "e49ba")),  # HTTP/0.9 style, no protocol
        ("GET /o/YmIwOGQwOmU0OWJh.gif HTTP/9.9", ("bb08d0", "e49ba")),
        ("GET http://t.mailer.example.com/o/YmIwOGQwOmU0OWJh.gif HTTP/1.1", ("bb08d0", "e49ba")),
        ("GET //o/7d81d5.960a63.gif HTTP/1.1", ("7d81d5", "960a63")),
        ("GET /o/../o/7d81d5.fc9960.gif HTTP/1.1", ("7d81d5", "fc9960")),
        ("GET /o/%31%35%33%34%66%37%2E%34%61%32%36%64%36.gif HTTP/1.1", ("1534f7", "4a26d6")),
        ("GET /o/YmIwOGQwOmZmZGVk.gif?cb=0ycmqd34jx HTTP/1.1", ("bb08d0", "ffded")),
    ],
    ids=["http09", "http99", "absolute-form", "double-slash", "dot-segments", "percent-encoded",
         "cache-buster"],
)
def test_request_oddities_apache_served(logged_request, ids):
    result = parse([line(logged_request)])
    row = result.events.to_pylist()[0]

    assert (row["delivery_id"], row["recipient_id"]) == ids


@pytest.mark.parametrize(
    ("target", "normalised"),
    [
        ("/r/?id=h3440b0,b0571,b", "/r/?id=h3440b0,b0571,b"),
        ("/r/bb08d0%2F25aa0%2F1", "/r/bb08d0%2F25aa0%2F1"),
        ("/o/%C3%BCn.gif", "/o/%C3%BCn.gif"),
        ("/a/./b/../c//d.gif?x=/../y", "/a/c/d.gif?x=/../y"),
        ("HTTP://Host:8080", "/"),
    ],
)
def test_normalise_target(target, normalised):
    assert normalise_target(target) == normalised


def test_escaped_user_agent_is_decoded():
    agent = "Mozilla/5.0 (Linux; Android 13; ru-RU) \\xd0\\x9f\\xd0\\xbe\\xd1\\x87\\xd1\\x82\\xd0\\xb0/1.0"
    result = parse([line("GET /o/YmIwOGQwOmE3YjM4ZA.gif HTTP/1.1", agent=agent)])

    assert result.events.column("user_agent").to_pylist() == [
        "Mozilla/5.0 (Linux; Android 13; ru-RU) Почта/1.0"]


def test_custom_route_ids_cannot_carry_paths():
    route = route_from_table({"event": "click", "pattern": r"^/c/(?P<delivery_id>.+)/(?P<recipient_id>\w+)$"})
    source = dataclasses.replace(COMBINED_SOURCE, routes=(route,))

    result = parse([line("GET /c/..%2F..%2Fetc/x1 HTTP/1.1", 302),
                    line("GET /c/<script>/x1 HTTP/1.1", 302),
                    line("GET /c/ok/x1 HTTP/1.1", 302)], source)

    assert result.events.column("delivery_id").to_pylist() == ["ok"]
    assert result.rejects.column("reason").to_pylist() == [
        "invalid id: delivery_id is empty, too long or contains characters an id cannot have"] * 2


def test_location_is_the_url_in_rich_format():
    rich = ('127.202.155.177 - - [04/Dec/2026:20:20:32 +0100] "GET /r/?id=h3440b0,b0571,b HTTP/1.1"'
            ' 302 613 "-" "Mozilla/5.0" "https://events.example.com/register?e=2026-12-20&seat=A%2612'
            '#form" 250 "198.51.100.103, 203.0.113.247" t.mailer.example.com')
    row = parse([rich], RICH_SOURCE).events.to_pylist()[0]

    assert row["url"] == "https://events.example.com/register?e=2026-12-20&seat=A%2612#form"
    assert row["response_time_us"] == 250
    assert row["vhost"] == "t.mailer.example.com"
    # client_ip = "truncate" (the default) keeps the /24 of each forwarded address.
    assert row["forwarded_for"] == "198.51.100.0, 203.0.113.0"


EXPECTED = json.loads((CASES / "expected_demo_logs.json").read_text())


def read_rotated(prefix: str) -> list[tuple[str, bytes]]:
    names = [f"{prefix}.3.gz", f"{prefix}.2.gz", f"{prefix}.1", prefix]
    logs = EXAMPLES / "logs" / "apache"
    return [(name, gzip.decompress((logs / name).read_bytes()) if name.endswith(".gz")
             else (logs / name).read_bytes()) for name in names]


@pytest.mark.parametrize(("prefix", "source", "key"), [
    ("tracking_access.log", COMBINED_SOURCE, "apache_combined"),
    ("tracking_rich.log", RICH_SOURCE, "apache_rich"),
], ids=["combined", "custom-format"])
def test_real_logs_match_ground_truth(prefix, source, key):
    parser = AccessLogParser(source)
    counts: Counter = Counter()
    for _name, data in read_rotated(prefix):
        batch, _, _, _ = split_lines(data, 0, 65536)
        events = parser.parse(batch, CONTEXT).events.to_pylist()
        for row in events:
            counts[(row["delivery_id"], row["event_type"])] += 1
            if row["event_type"] == "unsubscribe" and row["http_method"] == "POST":
                counts[(row["delivery_id"], "unsubscribe_post")] += 1

    expected = {(d, kind): n for d, kinds in EXPECTED[key].items() for kind, n in kinds.items()}
    assert dict(counts) == expected


def preset_source(preset: str):
    from clicktrail.agent.routes import PRESETS

    return dataclasses.replace(COMBINED_SOURCE, routes=PRESETS[preset])


@pytest.mark.parametrize(
    ("preset", "request_line", "expected"),
    [
        # Adobe Campaign Classic: content letter, broadlog hex, delivery hex, url id hex.
        ("adobe", "GET /r/?id=h2f4a1,4d5e6,1 HTTP/1.1", ("open", "4d5e6", "2f4a1", None)),
        ("adobe", "GET /r/?id=h2f4a1,4d5e6,1a&p1=fr HTTP/1.1", ("click", "4d5e6", "2f4a1", "1a")),
        ("adobe", "GET /r/?id=t2f4a1,4d5e6,5 HTTP/1.1", ("click", "4d5e6", "2f4a1", "5")),
        ("generic", "GET /o/d-1/r_2.gif?cb=9 HTTP/1.1", ("open", "d-1", "r_2", None)),
        ("generic", "GET /r/d1/r2/l3 HTTP/1.1", ("click", "d1", "r2", "l3")),
        ("generic", "POST /u/d1/r2 HTTP/1.1", ("unsubscribe", "d1", "r2", None)),
        ("generic", "GET /m/d1/r2/ HTTP/1.1", ("mirror", "d1", "r2", None)),
        ("listmonk", "GET /campaign/c1/s2/px.png HTTP/1.1", ("open", "c1", "s2", None)),
        ("listmonk", "GET /link/l9/c1/s2 HTTP/1.1", ("click", "c1", "s2", "l9")),
        ("mautic", "GET /index.php/email/ab12.gif HTTP/1.1", ("open", None, "ab12", None)),
    ],
)
def test_route_presets(preset, request_line, expected):
    result = parse([line(request_line, 302)], preset_source(preset))
    rows = result.events.to_pylist()

    assert len(rows) == 1
    assert (rows[0]["event_type"], rows[0]["delivery_id"], rows[0]["recipient_id"],
            rows[0]["link_id"]) == expected


def test_generic_preset_ignores_other_paths():
    result = parse([line("GET /o/../../etc/passwd HTTP/1.1"), line("GET /r/a/b HTTP/1.1"),
                    line("GET /u/" + "x" * 65 + "/r2 HTTP/1.1")], preset_source("generic"))

    assert result.events.num_rows == 0
    assert result.counters["not_routed"] == 3


@pytest.mark.parametrize(
    "when",
    ["30/Feb/2026:10:00:00 +0000", "04/Dec/2026:24:00:00 +0000", "04/Dec/2026:10:00:60 +0000",
     "04/Dec/2026:10:00:00 +2500", "04/Dec/2026:10:00:00 +0160", "4/Dec/2026:10:00:00 +0000"],
    ids=["feb-30", "hour-24", "second-60", "offset-25h", "offset-60min", "one-digit-day"],
)
def test_impossible_times_are_rejected(when):
    result = parse([line("GET /o/7d81d5.2ace6.gif HTTP/1.1", when=when)])

    assert result.events.num_rows == 0
    assert result.rejects.column("reason").to_pylist() == ["invalid time field"]


@pytest.mark.parametrize(
    ("status", "size"),
    [("40000", "42"), ("200", "99999999999999999999999"), ("2000000000000000000000", "1")],
    ids=["status-beyond-int16", "bytes-beyond-int64", "status-beyond-int64"],
)
def test_numbers_out_of_range_do_not_fail_the_batch(status, size):
    logged = (f'127.0.0.9 - - [04/Dec/2026:20:20:32 +0100] "GET /o/7d81d5.2ace6.gif HTTP/1.1" '
              f'{status} {size} "-" "Mozilla/5.0"')
    result = parse([logged, line("GET /o/7d81d5.aaaa.gif HTTP/1.1")])

    assert "aaaa" in result.events.column("recipient_id").to_pylist()


FRAGMENTS = st.sampled_from([
    '"', "\\", '\\"', "\\x", "\\xzz", "\\xff", "-", " ", "[", "]", "%", "%2F", "%zz", "?", "&",
    "/o/", "/r/", "/u/", "?id=h", ",", ".gif", "GET ", "POST ", " HTTP/1.1", "\t", "\x00",
    "<script>", "javascript:", "../", "04/Dec/2026:20:20:32 +0100", "+2500", "200", "302", "9" * 30,
])


@st.composite
def hostile_lines(draw):
    """Combined-format lines whose fields are built from troublesome fragments."""
    def field():
        return "".join(draw(st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=8)))
    return (f'{field()} - - [{field()}] "{field()} {field()} HTTP/1.1" {field()} {field()} '
            f'"{field()}" "{field()}"')


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(hostile_lines(), st.text(max_size=200)), min_size=1, max_size=20))
def test_no_line_crashes_the_parser(lines):
    lines = [line.replace("\n", " ").replace("\r", " ") for line in lines]
    result = parse(lines)

    assert result.events.schema == schema.EVENT_SCHEMA
    assert result.events.num_rows + result.rejects.num_rows <= len(lines)
    buffer = io.BytesIO()
    pq.write_table(result.events, buffer)
    assert pq.read_table(io.BytesIO(buffer.getvalue())).equals(result.events)


@pytest.mark.parametrize(
    ("request_line", "anomaly"),
    [
        # Request lines of the corpus's protocol oddities, as Apache logged them.
        ("GET /o/7d81d5.2ace6.gif", "no_protocol"),
        ("GET /o/7d81d5.2ace6.gif HTTP/9.9", "unknown_protocol"),
        ("GET http://t.mailer.example.com/o/7d81d5.2ace6.gif HTTP/1.1", "absolute_form"),
        (r"GET /o/7d81d5.2ace6.gif?x=\xc3\xbc HTTP/1.1", "raw_bytes"),
        ("GET /o/7d81d5.2ace6.gif?x=%C3%BC HTTP/1.1", None),
        ("GET /o/7d81d5.2ace6.gif HTTP/1.0", None),
        ("GET /o/7d81d5.2ace6.gif HTTP/2.0", None),
    ],
)
def test_request_anomaly_is_recorded(request_line, anomaly):
    rows = parse([line(request_line)]).events.to_pylist()

    assert [(row["event_type"], row["request_anomaly"]) for row in rows] == [("open", anomaly)]


@pytest.mark.parametrize(
    ("client", "truncated"),
    [
        ("192.0.2.17", "192.0.2.0"),
        ("0.0.0.0", "0.0.0.0"),
        ("255.255.255.255", "255.255.255.0"),
        ("10.200.249.250", "10.200.249.0"),
        ("192.0.2.017", None),  # ipaddress refuses leading zeros, which could mean octal
        ("256.0.2.1", None),
        ("1.2.3", None),
        ("::ffff:192.0.2.9", "192.0.2.0"),
        ("2001:db8:1234:5678::1", "2001:db8:1234::"),
        ("mail.example.com", None),
    ],
)
def test_client_address_truncated_in_arrow_or_by_ipaddress(client, truncated):
    request = "GET /o/7d81d5.2ace6.gif HTTP/1.1"
    text = line(request).replace("127.0.0.9", client, 1)
    rows = parse([line(request), text, line(request)]).events.to_pylist()

    assert [row["client_ip"] for row in rows] == ["127.0.0.0", truncated, "127.0.0.0"]
