"""Compile an Apache httpd LogFormat string into one RE2 pattern with named groups.

The pattern runs through pyarrow.compute.extract_regex over a whole batch of lines, which is what
makes access-log parsing fast: one C++ pass per batch instead of one Python call per line.

Apache writes quoted fields with its own escaping (mod_log_config, ap_escape_logitem): `"` and
`\\` get a backslash, control characters become \\t, \\n and the like, and every other
non-printable or non-ASCII byte becomes \\xhh. Quoted fields therefore match `(?:[^"\\]|\\.)*`,
and unescape_apache() turns them back into text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PRESET_FORMATS = {
    "common": r'%h %l %u %t "%r" %>s %b',
    # Debian's apache2.conf writes %O (bytes sent, headers included) where upstream has %b.
    "combined": r'%h %l %u %t "%r" %>s %O "%{Referer}i" "%{User-Agent}i"',
    "vhost_combined": r'%v:%p %h %l %u %t "%r" %>s %O "%{Referer}i" "%{User-Agent}i"',
    # nginx's predefined combined format has the same shape ($body_bytes_sent for %b).
    "nginx_combined": r'%h - %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"',
}

# The fields the access-log parser uses, by directive. A directive not listed here is matched
# and skipped.
_FIELD_BY_DIRECTIVE = {
    "h": "client_ip",
    "a": "client_ip",
    "r": "request",
    "s": "status",
    "b": "response_bytes",
    "B": "response_bytes",
    "O": "response_bytes",
    "D": "response_time_us",
    "v": "vhost",
    "m": "method",
    "U": "path",
    "q": "query",
}
_FIELD_BY_HEADER = {
    ("i", "referer"): "referer",
    ("i", "user-agent"): "user_agent",
    ("i", "x-forwarded-for"): "forwarded_for",
    ("o", "location"): "location",
}

_DIRECTIVE = re.compile(r"%(?P<mod>[<>!0-9,]*)(?:\{(?P<arg>[^}]*)\})?(?P<code>[a-zA-Z%])")
_QUOTED_VALUE = r'(?:[^"\\]|\\.)*'
_TOKEN_VALUE = r"\S*"
_NUMBER_OR_DASH = r"(?:-|\d+)"
_KNOWN_CODES = set("aAbBCDefhHiklLmnopPqrRsStTuUvVXIO%")


class LogFormatError(ValueError):
    pass


@dataclass(frozen=True)
class CompiledFormat:
    pattern: str
    # Named group -> field name, for the groups the parser uses.
    fields: dict[str, str]
    # How to read the time group: "clf" ([10/Oct/2000:13:55:36 -0700]), "sec", "msec", "usec",
    # or an strftime format given in %{...}t.
    time_format: str | None
    # Fields whose raw value was in double quotes in the format (they may carry Apache escapes).
    quoted: frozenset[str]


def compile_log_format(log_format: str) -> CompiledFormat:
    """Turn a LogFormat string (or a preset name) into a CompiledFormat."""
    text = PRESET_FORMATS.get(log_format, log_format)
    # Formats copied from an Apache config often keep its escaped quotes.
    text = text.replace('\\"', '"')
    if "%" not in text:
        raise LogFormatError(f"invalid log_format {log_format!r}: expected a preset name "
                             f"({', '.join(PRESET_FORMATS)}) or an Apache LogFormat string")

    parts: list[str] = ["^"]
    fields: dict[str, str] = {}
    quoted_fields: set[str] = set()
    time_format: str | None = None
    in_quotes = False
    position = 0
    group_index = 0

    for match in _DIRECTIVE.finditer(text):
        literal = text[position:match.start()]
        in_quotes ^= literal.count('"') % 2 == 1
        parts.append(re.escape(literal))
        position = match.end()

        code, arg = match.group("code"), match.group("arg")
        if code not in _KNOWN_CODES:
            raise LogFormatError(f"unsupported directive {match.group(0)!r} in log_format "
                                 f"{log_format!r}")
        if code == "%":
            parts.append("%")
            continue

        group = f"f{group_index}"
        group_index += 1
        field = _field_for(code, arg)
        if code == "t" and time_format is None:
            field = "time"
            time_format = _time_format(arg)
        if field is not None and field in fields.values():
            field = None  # the first directive for a field wins

        value = _value_pattern(code, arg, in_quotes)
        if field is None:
            parts.append(f"(?:{value})")
        else:
            parts.append(f"(?P<{group}>{value})")
            fields[group] = field
            if in_quotes:
                quoted_fields.add(field)

    trailing = text[position:]
    parts.append(re.escape(trailing))
    parts.append("$")
    if time_format is None:
        raise LogFormatError(f"log_format {log_format!r} has no time directive (%t); events need "
                             "a time")
    if "request" not in fields.values() and "path" not in fields.values():
        raise LogFormatError(f"log_format {log_format!r} has neither %r nor %U; routes need the "
                             "request path")
    if "status" not in fields.values():
        raise LogFormatError(f"log_format {log_format!r} has no status directive (%>s or %s); "
                             "only successful requests become events")
    return CompiledFormat("".join(parts), fields, time_format, frozenset(quoted_fields))


def _field_for(code: str, arg: str | None) -> str | None:
    if code in ("i", "o") and arg:
        return _FIELD_BY_HEADER.get((code, arg.lower()))
    if code == "T" and arg in ("us", "ms", "s", None):
        return None if arg != "us" else "response_time_us"
    if arg and code in ("h", "a"):
        return None  # %{c}a and %{c}h name the peer, not the client
    return _FIELD_BY_DIRECTIVE.get(code)


def _time_format(arg: str | None) -> str:
    if arg is None:
        return "clf"
    for prefix in ("begin:", "end:"):
        if arg.startswith(prefix):
            arg = arg[len(prefix):]
    if arg in ("sec", "msec", "usec"):
        return arg
    if "%z" not in arg:
        raise LogFormatError(f"time format %{{{arg}}}t has no %z; clicktrail needs the UTC "
                             "offset of each line (use %t or add %z)")
    return arg


def _value_pattern(code: str, arg: str | None, in_quotes: bool) -> str:
    if code == "t":
        if arg is None:
            return r"\[[^\]]*\]"
        return r"[^\]\"]*" if in_quotes else r".+?"
    if in_quotes:
        return _QUOTED_VALUE
    if code in ("s", "b", "B", "O", "I", "D", "T", "p", "P", "k"):
        return _NUMBER_OR_DASH
    return _TOKEN_VALUE


_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {b"t": b"\t", b"n": b"\n", b"r": b"\r", b"b": b"\b", b"v": b"\v", b"f": b"\f"}


def unescape_apache(value: str) -> str:
    """Undo Apache's log escaping; bytes that are not UTF-8 become U+FFFD."""
    if "\\" not in value:
        return value

    def replace(match: re.Match[bytes]) -> bytes:
        token = match.group(1)
        if len(token) == 3:
            return bytes([int(token[1:], 16)])
        return _SIMPLE_ESCAPES.get(token, token)

    raw = _ESCAPE.sub(replace, value.encode("utf-8", errors="surrogateescape"))
    return raw.decode("utf-8", errors="replace")
