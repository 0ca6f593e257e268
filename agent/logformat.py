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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    # A cheaper way to cut most lines, or None when the format does not allow it.
    split: SplitPlan | None = None


@dataclass(frozen=True)
class SplitPlan:
    """Cut lines at their quotes and spaces with split_pattern instead of the regular expression.

    RE2 runs its one-pass engine for at most four groups (kMaxOnePassCapture in re2/prog.h) and
    a backtracking one for more, which made the LogFormat pattern the largest cost of parsing.
    Some lines match `strict` (no backslash in a quoted value) and split into the expected
    number of parts and tokens. In such a line every quote and every space is where the format
    puts one, so each field is at a fixed position of the split. Other lines go through the
    regular expression.
    """

    # The format's pattern without groups, for quoted values without a quote or backslash.
    strict: str
    # Number of parts when a line is split at its double quotes.
    parts: int
    # Unquoted parts with a wanted field: part index -> number of tokens between spaces.
    tokens: dict[int, int]
    # Group -> (part index, token index or None for a quoted part, tokens the value spans).
    places: dict[str, tuple[int, int | None, int]]


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
    # The format as literals (str) and directives ((group or None, code, arg)), for _split_plan.
    elements: list[str | tuple[str | None, str, str | None]] = []

    for match in _DIRECTIVE.finditer(text):
        literal = text[position:match.start()]
        in_quotes ^= literal.count('"') % 2 == 1
        parts.append(re.escape(literal))
        elements.append(literal)
        position = match.end()

        code, arg = match.group("code"), match.group("arg")
        if code not in _KNOWN_CODES:
            raise LogFormatError(f"unsupported directive {match.group(0)!r} in log_format "
                                 f"{log_format!r}")
        if code == "%":
            parts.append("%")
            elements.append("%")
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
        elements.append((None if field is None else group, code, arg))
        if field is None:
            parts.append(f"(?:{value})")
        else:
            parts.append(f"(?P<{group}>{value})")
            fields[group] = field
            if in_quotes:
                quoted_fields.add(field)

    trailing = text[position:]
    parts.append(re.escape(trailing))
    elements.append(trailing)
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
    pattern = "".join(parts)
    return CompiledFormat(pattern, fields, time_format, frozenset(quoted_fields),
                          _split_plan(pattern, elements))


def _split_plan(pattern: str, elements: list) -> SplitPlan | None:
    """Plan how split_pattern can cut the format, or None when it cannot.

    Every quoted part must contain one directive and nothing else. Outside quotes, spaces must
    separate the directives and the literal text, and only the %t time may contain a space.
    """
    # Cut the format at its double quotes: even parts are outside quotes, odd parts inside.
    segments: list[list] = [[]]
    for element in elements:
        if isinstance(element, str):
            for index, piece in enumerate(element.split('"')):
                if index > 0:
                    segments.append([])
                segments[-1].extend(piece)
        else:
            segments[-1].append(element)
    if len(segments) % 2 == 0:
        return None

    places: dict[str, tuple[int, int | None, int]] = {}
    tokens: dict[int, int] = {}
    for index, segment in enumerate(segments):
        if index % 2 == 1:
            if len(segment) != 1 or isinstance(segment[0], str):
                return None
            if segment[0][0] is not None:
                places[segment[0][0]] = (index, None, 1)
            continue
        layout = _token_layout(segment)
        if layout is None:
            return None
        count, found = layout
        if found:
            tokens[index] = count
            places.update({group: (index, token, width) for group, (token, width) in found.items()})

    strict = re.sub(r"\(\?P<f[0-9]+>", "(?:", pattern).replace(_QUOTED_VALUE, r'[^"\\]*')
    return SplitPlan(strict, len(segments), tokens, places)


def _token_layout(segment: list) -> tuple[int, dict[str, tuple[int, int]]] | None:
    """Return (tokens, {group: (token index, tokens spanned)}) for an unquoted part, or None."""
    pieces: list[list] = [[]]
    for item in segment:
        if item == " ":
            pieces.append([])
        else:
            pieces[-1].append(item)

    found: dict[str, tuple[int, int]] = {}
    token = 0
    wide = 0
    for piece in pieces:
        directives = [item for item in piece if not isinstance(item, str)]
        if not directives:
            token += 1  # literal text, which the strict pattern checks
            continue
        if len(piece) != 1:
            return None  # a directive next to another or to literal text, as in %v:%p
        group, code, arg = piece[0]
        width = 1
        if code == "t":
            if arg is not None:
                return None  # an strftime time may hold any number of spaces
            # [10/Oct/2000:13:55:36 -0700] contains one space, so it spans two tokens.
            width = 2
            wide += 1
        if group is not None:
            found[group] = (token, width)
        token += width
    if wide > 1:
        return None  # the token count could not tell which time contains the space
    return token, found


def extract_fields(lines: pa.Array,
                   compiled: CompiledFormat) -> tuple[np.ndarray, dict[str, pa.Array], np.ndarray]:
    """Extract the format's groups from every line.

    Returns (matched, values by group, slow): the values of a line that does not match are null,
    and slow marks the lines cut by the regular expression, the only ones whose quoted values
    may contain Apache escapes.
    """
    everything = np.ones(len(lines), dtype=bool)
    plan = compiled.split
    if plan is None:
        return (*_extract_regex(lines, compiled.pattern), everything)

    cut = pc.split_pattern(lines, '"')
    fast = pc.and_(pc.match_substring_regex(lines, plan.strict),
                   pc.equal(pc.list_value_length(cut), plan.parts))
    fast_np = np.asarray(fast.fill_null(False))
    if not fast_np.all():
        cut = cut.filter(pa.array(fast_np))
    words = {}
    for part, count in plan.tokens.items():
        words[part] = pc.split_pattern(pc.list_element(cut, part), " ")
        spaced = np.asarray(pc.equal(pc.list_value_length(words[part]), count))
        if not spaced.all():
            # A time without a space or with several shifts the tokens, so the regex cuts it.
            fast_np[np.flatnonzero(fast_np)[~spaced]] = False
            keep = pa.array(spaced)
            cut = cut.filter(keep)
            words = {done: split.filter(keep) for done, split in words.items()}

    values = {}
    for group, (part, token, width) in plan.places.items():
        if token is None:
            values[group] = pc.list_element(cut, part)
        elif width == 1:
            values[group] = pc.list_element(words[part], token)
        else:
            values[group] = pc.binary_join_element_wise(pc.list_element(words[part], token),
                                                        pc.list_element(words[part], token + 1), " ")
    slow = ~fast_np
    if not slow.any():
        return everything, values, slow

    slow_rows = np.flatnonzero(slow)
    matched, slow_values = _extract_regex(lines.take(pa.array(slow_rows)), compiled.pattern)
    order = pa.array(np.argsort(np.concatenate([np.flatnonzero(fast_np), slow_rows]), kind="stable"))
    merged = {group: pa.concat_arrays([values[group], slow_values[group]]).take(order)
              for group in values}
    all_matched = fast_np.copy()
    all_matched[slow_rows] = matched
    return all_matched, merged, slow


def _extract_regex(lines: pa.Array, pattern: str) -> tuple[np.ndarray, dict[str, pa.Array]]:
    fields = pc.extract_regex(lines, pattern)
    names = [fields.type.field(i).name for i in range(fields.type.num_fields)]
    return np.asarray(fields.is_valid()), {name: fields.field(name) for name in names}


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
