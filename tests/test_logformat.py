"""LogFormat compilation and Apache's log escaping, on lines written by Apache httpd 2.4."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest
from clicktrail.agent.logformat import LogFormatError, compile_log_format, extract_fields, unescape_apache

COMBINED_LINE = ('127.202.155.177 - - [04/Dec/2026:20:20:32 +0100] "GET /r/?id=h3440b0,b0571,b '
                 'HTTP/1.1" 302 613 "-" "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/'
                 '537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"')
RICH_FORMAT = ('%h %l %u %t \\"%r\\" %>s %O \\"%{Referer}i\\" \\"%{User-Agent}i\\" '
               '\\"%{Location}o\\" %D \\"%{X-Forwarded-For}i\\" %v')
RICH_LINE = ('127.202.155.177 - - [04/Dec/2026:20:20:32 +0100] "GET /r/?id=h3440b0,b0571,b '
             'HTTP/1.1" 302 613 "-" "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 '
             '(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36" "https://events.example.com/'
             'register?e=2026-12-20&seat=A%2612#form" 250 "198.51.100.103, 203.0.113.247" '
             't.mailer.example.com')


def fields_of(log_format: str, line: str) -> dict[str, str]:
    compiled = compile_log_format(log_format)
    match = re.match(compiled.pattern, line)
    assert match is not None
    return {compiled.fields[group]: value for group, value in match.groupdict().items()}


def test_combined_preset_fields():
    fields = fields_of("combined", COMBINED_LINE)

    assert fields["client_ip"] == "127.202.155.177"
    assert fields["time"] == "[04/Dec/2026:20:20:32 +0100]"
    assert fields["request"] == "GET /r/?id=h3440b0,b0571,b HTTP/1.1"
    assert fields["status"] == "302"
    assert fields["response_bytes"] == "613"
    assert fields["referer"] == "-"
    assert fields["user_agent"].startswith("Mozilla/5.0 (Windows NT 10.0")


def test_custom_format_location_and_duration():
    fields = fields_of(RICH_FORMAT, RICH_LINE)

    assert fields["location"] == "https://events.example.com/register?e=2026-12-20&seat=A%2612#form"
    assert fields["response_time_us"] == "250"
    assert fields["forwarded_for"] == "198.51.100.103, 203.0.113.247"
    assert fields["vhost"] == "t.mailer.example.com"
    assert compile_log_format(RICH_FORMAT).quoted >= {"request", "user_agent", "location"}


def test_escaped_quote_inside_field():
    # Apache writes a user agent of  Evil" 200 42 "-" "fake/1.0  with escaped quotes.
    line = ('127.254.1.141 - - [04/Dec/2026:20:20:14 +0100] "GET /r/?id=h3440b0,d4b35,a HTTP/1.1"'
            ' 302 615 "-" "Evil\\" 200 42 \\"-\\" \\"fake/1.0"')
    fields = fields_of("combined", line)

    assert fields["status"] == "302"
    assert unescape_apache(fields["user_agent"]) == 'Evil" 200 42 "-" "fake/1.0'


@pytest.mark.parametrize(
    ("logged", "text"),
    [
        ('Mozilla/5.0 \\"quoted\\" \\\\backslash\\\\', 'Mozilla/5.0 "quoted" \\backslash\\'),
        ("Mozilla/5.0\\t(tab)", "Mozilla/5.0\t(tab)"),
        ("\\xd0\\x9f\\xd0\\xbe\\xd1\\x87\\xd1\\x82\\xd0\\xb0/1.0 \\xf0\\x9f\\x93\\xa7", "Почта/1.0 📧"),
        ("\\x16\\x03\\x01", "\x16\x03\x01"),
        ("broken \\xff byte", "broken \ufffd byte"),
        ("plain", "plain"),
    ],
    ids=["quotes-backslash", "tab", "utf8-bytes", "tls-hello", "invalid-utf8", "plain"],
)
def test_unescape_apache(logged, text):
    assert unescape_apache(logged) == text


@pytest.mark.parametrize(
    ("log_format", "message"),
    [
        ("%h %r %s", "has no time directive"),
        ("%h %t %s", "has neither %r nor %U"),
        ("%h %t %r", "has no status directive"),
        ("%h %t %r %s %J", "unsupported directive '%J'"),
        ("%h %{%d/%m/%Y}t %r %s", "has no %z"),
        ("nonsense", "expected a preset name"),
    ],
)
def test_invalid_formats(log_format, message):
    with pytest.raises(LogFormatError, match=re.escape(message)):
        compile_log_format(log_format)


# Lines that the split path must cut like the regular expression, and whether the regular
# expression has to cut them (slow): a backslash in a quoted value, a quote or a space where the
# format has none, a time with no space or two.
SPLIT_CASES = [
    (COMBINED_LINE, False),
    ('192.0.2.1 - - [04/Dec/2026:20:20:32 +0100] "GET / HTTP/1.1" 200 - "" ""', False),
    ('192.0.2.1 - - [04/Dec/2026:20:20:32 +0100] "GET /\\"x HTTP/1.1" 200 5 "-" "a\\\\"', True),
    ('192.0.2.1 - - [04/Dec/2026:20:20:32 +0100] "\\x16\\x03\\x01" 400 0 "-" "-"', True),
    ('192.0.2.1 - - [04/Dec/2026:20:20:32+0100] "GET / HTTP/1.1" 200 5 "-" "-"', True),
    ('192.0.2.1 - - [04/Dec/2026:20:20:32  +0100] "GET / HTTP/1.1" 200 5 "-" "-"', True),
    ('192.0.2.1 - a"b [04/Dec/2026:20:20:32 +0100] "GET / HTTP/1.1" 200 5 "-" "-"', True),
    ('192.0.2.1 - - [04/Dec/2026:20:20:32 +0100] "GET / HTTP/1.1" 200 5 "-" "-" "extra"', True),
    ('192.0.2.1 - - [04/Dec/2026:20:20:32 +0100] "GET / HTTP/1.1" 2x0 5 "-" "-"', True),
    ('192.0.2.1  - - [04/Dec/2026:20:20:32 +0100] "GET / HTTP/1.1" 200 5 "-" "-"', True),
    ('192.0.2.1 - - [04/Dec/2026:20:20:32 +0100] "GET / HTTP/1.1" 200 5 "-" "-', True),
    ("", True),
]


@pytest.mark.parametrize("log_format", ["combined", "nginx_combined", RICH_FORMAT])
def test_split_path_cuts_like_the_regex(log_format):
    compiled = compile_log_format(log_format)
    lines = [line for line, _ in SPLIT_CASES] + [RICH_LINE]

    matched, values, slow = extract_fields(pa.array(lines, pa.string()), compiled)

    assert compiled.split is not None
    for row, line in enumerate(lines):
        expected = re.match(compiled.pattern, line, re.ASCII)
        assert matched[row] == (expected is not None), line
        if expected is not None:
            got = {group: values[group][row].as_py() for group in compiled.fields}
            assert got == expected.groupdict(), line
    if log_format == "combined":
        assert slow.tolist() == [case_slow for _, case_slow in SPLIT_CASES] + [True]


@pytest.mark.parametrize(
    ("log_format", "has_plan"),
    [
        ("combined", True),
        ("common", True),
        ("nginx_combined", True),
        ('%h "%t" "%r" %>s', True),
        ("vhost_combined", False),  # %v:%p puts two directives in one token
        ('%h %{%d/%b/%Y:%H:%M:%S %z}t "%r" %>s', False),  # an strftime time
        ('%h %t %t "%r" %>s', False),  # two times that may each hold the space
        ('%h "%r %>s" %t', False),  # two directives in one pair of quotes
    ],
)
def test_split_plan_only_for_formats_it_can_cut(log_format, has_plan):
    assert (compile_log_format(log_format).split is not None) == has_plan


def test_split_without_plan_uses_regex():
    compiled = compile_log_format("vhost_combined")
    line = "t.example.com:80 " + COMBINED_LINE

    matched, values, slow = extract_fields(pa.array([line, "junk"], pa.string()), compiled)

    assert matched.tolist() == [True, False]
    assert slow.tolist() == [True, True]
    assert values["f0"][0].as_py() == "t.example.com"
