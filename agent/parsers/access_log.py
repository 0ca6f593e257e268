"""Parse Apache httpd and nginx access logs into tracking events.

The work happens on whole batches in Arrow: one extract_regex for the LogFormat, one strptime
for the times, one extract_regex per route. Python loops touch only the rare rows that need
them: values with Apache escapes, request targets that need normalising, and opaque tokens.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections import defaultdict
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..logformat import CompiledFormat, compile_log_format, extract_fields, unescape_apache
from ..routes import ID_FIELDS, PRESET_ID, VALID_ID, Route, TokenError
from .base import LineBatch, ParseResult, SourceContext, build_events, build_rejects

log = logging.getLogger(__name__)

# Method, target and optional protocol; HTTP/0.9-style request lines have no protocol.
REQUEST_LINE = (r"^(?P<method>[A-Z][A-Z0-9_-]{0,19}) (?P<target>[^ ]+)"
                r"(?: (?P<protocol>HTTP/[0-9]+\.[0-9]+))?$")
# Protocols that mail clients, image proxies and browsers send.
CLIENT_PROTOCOLS = ("HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/3.0")
ABSOLUTE_FORM = r"^[A-Za-z][A-Za-z0-9+.-]*://"
# httpd logs bytes outside printable ASCII as \xhh, which the parser has decoded by the time
# this applies: a client that sent them did not percent-encode its request target.
RAW_BYTES = r"[^\x21-\x7E]"
# Targets that normalise_target() may change: absolute form, percent escapes, empty or dot
# segments.
NEEDS_NORMALISING = r"^[A-Za-z][A-Za-z0-9+.-]*://|%|//|/\.\.?(?:/|\?|$)"
UNRESERVED = re.compile(r"%(2[DdEe]|3[0-9]|[46][1-9A-Fa-f]|[57][0-9Aa]|5[Ff]|7[Ee])")


INT64 = pa.int64()
# Common Log Format time with every field in its range; Arrow's strptime would roll
# 30/Feb over into March and accept an offset of +2500.
CLF_TIME = (r"^(0[1-9]|[12][0-9]|3[01])/[A-Z][a-z]{2}/[0-9]{4}:([01][0-9]|2[0-3]):[0-5][0-9]:"
            r"[0-5][0-9] [+-](0[0-9]|1[0-4])[0-5][0-9]$")


class AccessLogParser:
    def __init__(self, cfg: Any):
        self.routes: tuple[Route, ...] = tuple(cfg.routes)
        self.format: CompiledFormat = compile_log_format(cfg.log_format)
        self.timezone = getattr(cfg, "timezone", "UTC")
        self.addresses = ClientAddressPolicy(getattr(cfg, "client_ip", "truncate"),
                                             getattr(cfg, "ip_ranges", ()))

    def snapshot(self) -> None:
        return None

    def restore(self, state: dict[str, Any]) -> None:
        del state

    def parse(self, batch: LineBatch, ctx: SourceContext) -> ParseResult:
        counters = {"lines": len(batch)}
        if len(batch) == 0:
            return ParseResult(build_events({}, ctx, batch.offsets), _no_rejects(ctx), counters)

        matched, values, slow = extract_fields(batch.lines, self.format)
        columns = {name: values[group] for group, name in self.format.fields.items()}
        times = _parse_times(columns["time"], self.format.time_format)
        timed = matched & np.asarray(times.is_valid().fill_null(False))

        reject_rows = np.flatnonzero(~timed)
        reasons = ["line does not match log_format" if not matched[i] else
                   "invalid time field" for i in reject_rows]
        counters["rejected"] = len(reject_rows)

        rows = np.flatnonzero(timed)
        events, token_rejects, route_counters = self._route(rows, columns, slow, times, ctx, batch)
        counters.update(route_counters)

        rejects = _merge_rejects(ctx, batch, reject_rows, reasons, token_rejects)
        counters["rejected"] += len(token_rejects)
        return ParseResult(events, rejects, counters)

    def _route(self, rows: np.ndarray, columns: dict[str, pa.Array], slow: np.ndarray,
               times: pa.Array, ctx: SourceContext, batch: LineBatch):
        counters = {"not_successful": 0, "not_routed": 0, "events": 0}
        if len(rows) == 0:
            return build_events({}, ctx, rows), [], counters

        if len(rows) == len(slow):
            selected = dict(columns)  # every line parsed, so taking them all would only copy
        else:
            take = pa.array(rows)
            selected = {name: col.take(take) for name, col in columns.items()}
        # Only lines that the regular expression cut may contain Apache escapes.
        escapable = slow[rows]
        status = _to_int(selected["status"], max_digits=3, type_=pa.int16())
        ok = np.asarray(pc.and_(pc.greater_equal(status, 200), pc.less(status, 400)).fill_null(False))
        counters["not_successful"] = int((~ok).sum())

        method, raw_target, protocol = _method_and_target(selected, escapable)
        target = _normalise_targets(raw_target)
        # Method masks stay in Arrow: turning the method column into Python strings would cost
        # more than the routing itself.
        method_masks: dict[tuple[str, ...], np.ndarray] = {}

        chosen_route = np.full(len(rows), -1, dtype=np.int64)
        pieces: list[_RoutedRows] = []
        for index, route in enumerate(self.routes):
            allowed = method_masks.get(route.methods)
            if allowed is None:
                allowed = np.asarray(pc.is_in(method, value_set=pa.array(route.methods))
                                     .fill_null(False))
                method_masks[route.methods] = allowed
            candidates = ok & (chosen_route < 0) & allowed
            if not candidates.any():
                continue
            cand_idx = np.flatnonzero(candidates)
            extracted = pc.extract_regex(target.take(pa.array(cand_idx)), route.pattern)
            hit = np.asarray(extracted.is_valid().fill_null(False))
            if not hit.any():
                continue
            chosen_route[cand_idx[hit]] = index
            pieces.append(_routed_rows(route, extracted.filter(pa.array(hit)), cand_idx[hit]))
        counters["not_routed"] = int((ok & (chosen_route < 0)).sum())

        request = (method, raw_target, protocol, escapable)
        return self._events(rows, pieces, selected, request, times, ctx, batch, counters)

    def _events(self, rows, pieces, selected, request, times, ctx, batch, counters):
        method, raw_target, protocol, escapable = request
        token_rejects = [(int(rows[p]), reason) for piece in pieces
                         for p, reason in zip(piece.rejected, piece.reasons, strict=True)]
        if not pieces:
            counters["events"] = 0
            return build_events({}, ctx, rows[:0]), token_rejects, counters

        positions = np.concatenate([piece.positions for piece in pieces])
        order = pa.array(np.argsort(positions, kind="stable"))
        positions = positions[np.asarray(order)]
        keep = pa.array(positions)
        line_rows = rows[positions]

        columns: dict[str, Any] = {
            "event_time": times.take(pa.array(line_rows)),
            "http_method": method.take(keep),
        }
        # Only the lines that became events need it, so it is computed on those alone.
        anomaly = _request_anomaly(raw_target.take(keep),
                                   protocol.take(keep) if protocol is not None else None)
        if anomaly is not None:
            columns["request_anomaly"] = anomaly
        for name in ("event_type", *ID_FIELDS, "url"):
            columns[name] = pa.concat_arrays([piece.columns[name] for piece in pieces]).take(order)
        for name in ("status", "client_ip", "user_agent", "referer", "forwarded_for", "vhost",
                     "response_bytes", "response_time_us", "location"):
            if name not in selected:
                continue
            column = _null_dash(selected[name].take(keep))
            if name in self.format.quoted:
                column = _unescape_quoted(column, escapable[positions])
            if name in ("status", "response_bytes", "response_time_us"):
                column = _to_int(column, max_digits=18)
            if name == "location":
                # The redirect target in the server's response is the best URL, else the route's.
                columns["url"] = pc.coalesce(column, columns["url"])
                continue
            columns["http_status" if name == "status" else name] = column
        self.addresses.apply(columns)

        counters["events"] = len(positions)
        events = build_events(columns, ctx, batch.offsets[line_rows])
        return events, token_rejects, counters


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Prefix lengths kept by client_ip = "truncate": a /24 is one IPv4 subnet of 256 addresses and a
# /48 one IPv6 site, which still place a hit at a network without identifying a host.
TRUNCATE_PREFIX = {4: 24, 6: 48}
# An IPv4 address as ipaddress accepts it: four decimal octets without leading zeros. Group 1 is
# the first three octets, which the address's /24 network keeps.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
PLAIN_IPV4 = rf"^({_OCTET}\.{_OCTET}\.{_OCTET})\.{_OCTET}$"


class ClientAddressPolicy:
    """Tag client addresses with their configured range, then truncate, keep or drop them.

    Work is done once per distinct value of a batch (dictionary_encode), because one client
    usually sends many requests.
    """

    def __init__(self, mode: str, ranges: Any):
        if mode not in ("truncate", "keep", "drop"):
            raise ValueError(f"client_ip must be truncate, keep or drop, got {mode!r}")
        self.mode = mode
        self.names = [name for name, _ in ranges]
        # Per IP version: (mask, {network address: range index}) for each prefix length in use.
        # A lookup masks the address once per prefix length instead of testing every network.
        by_prefix: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)
        for index, (_, networks) in enumerate(ranges):
            for network in networks:
                # setdefault keeps the first range in config order for a network listed twice.
                by_prefix[(network.version, network.prefixlen)].setdefault(
                    int(network.network_address), index)
        self.tables: dict[int, list[tuple[int, dict[int, int]]]] = {4: [], 6: []}
        for (version, prefix), table in sorted(by_prefix.items()):
            bits = 32 if version == 4 else 128
            mask = ((1 << prefix) - 1) << (bits - prefix)
            self.tables[version].append((mask, table))

    def apply(self, columns: dict[str, Any]) -> None:
        """Set client_network and rewrite client_ip and forwarded_for in place by the mode."""
        client = columns.get("client_ip")
        if client is not None:
            encoded = _combined(client).dictionary_encode()
            if self.names:
                addresses = [parse_address(value) for value in encoded.dictionary.to_pylist()]
                names = pa.array([self.range_name(a) for a in addresses], pa.string())
                columns["client_network"] = names.take(encoded.indices)
            if self.mode == "truncate":
                columns["client_ip"] = _truncate_distinct(encoded.dictionary).take(encoded.indices)
            elif self.mode == "drop":
                columns["client_ip"] = pa.nulls(len(client), pa.string())

        forwarded = columns.get("forwarded_for")
        if forwarded is not None:
            if self.mode == "truncate":
                encoded = _combined(forwarded).dictionary_encode()
                lists = [truncate_forwarded_for(v) for v in encoded.dictionary.to_pylist()]
                columns["forwarded_for"] = pa.array(lists, pa.string()).take(encoded.indices)
            elif self.mode == "drop":
                columns["forwarded_for"] = pa.nulls(len(forwarded), pa.string())

    def range_name(self, address: IpAddress | None) -> str | None:
        """Return the name of the first configured range containing address, or None."""
        if address is None or not self.names:
            return None
        value = int(address)
        best: int | None = None
        for mask, table in self.tables[address.version]:
            index = table.get(value & mask)
            if index is not None and (best is None or index < best):
                best = index
        return None if best is None else self.names[best]


def parse_address(value: str | None) -> IpAddress | None:
    """Parse a logged client address, turning an IPv4-mapped IPv6 address into its IPv4 address.

    A server listening on a dual-stack IPv6 socket logs an IPv4 client as ::ffff:192.0.2.17,
    which must match IPv4 ranges and truncate to /24.
    """
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def truncate_address(address: IpAddress | None) -> str | None:
    """Return the network address of address's /24 (IPv4) or /48 (IPv6).

    NOTE: a value that is not an IP address (a host name when httpd's HostnameLookups is on)
    cannot be truncated, so it becomes null rather than being stored in full.
    """
    if address is None:
        return None
    network = ipaddress.ip_network(f"{address}/{TRUNCATE_PREFIX[address.version]}", strict=False)
    return str(network.network_address)


def _truncate_distinct(values: pa.Array) -> pa.Array:
    """Truncate each value as truncate_address(parse_address(value)) does.

    One regular expression in Arrow truncates the dotted-quad IPv4 addresses, nearly every value
    in practice. ipaddress costs about 15 µs per value (measured on this project's benchmark
    machine), so it parses only the other values.
    """
    plain = pc.match_substring_regex(values, PLAIN_IPV4).fill_null(False)
    truncated = pc.replace_substring_regex(values, PLAIN_IPV4, r"\1.0")
    others = pc.invert(plain)
    if not pc.any(others).as_py():
        return truncated
    rest = [truncate_address(parse_address(value)) for value in values.filter(others).to_pylist()]
    return pc.replace_with_mask(truncated, others, pa.array(rest, pa.string()))


def truncate_forwarded_for(value: str | None) -> str | None:
    """Truncate each address of an X-Forwarded-For list and keep its "unknown" tokens.

    A token with a port (192.0.2.17:443, [2001:db8::1]:443) is truncated without its port. A
    token that is not an address becomes "unknown", which keeps the number of hops.
    """
    if value is None:
        return None
    tokens = []
    for token in value.split(","):
        token = token.strip()
        if token.lower() == "unknown":
            tokens.append(token)
            continue
        truncated = truncate_address(parse_address(_strip_port(token)))
        tokens.append(truncated if truncated is not None else "unknown")
    return ", ".join(tokens)


def _strip_port(token: str) -> str:
    if token.startswith("["):
        return token[1:].split("]", 1)[0]
    if token.count(":") == 1:
        return token.split(":", 1)[0]
    return token


def _combined(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


class _RoutedRows:
    """The rows one route matched: positions in the batch and their event columns."""

    def __init__(self, positions: np.ndarray, columns: dict[str, pa.Array],
                 rejected: np.ndarray, reasons: list[str]):
        self.positions = positions
        self.columns = columns
        self.rejected = rejected
        self.reasons = reasons


def _routed_rows(route: Route, hits: pa.StructArray, positions: np.ndarray) -> _RoutedRows:
    """Build event columns for the rows a route matched; bad tokens and ids become rejects."""
    count = len(positions)
    names = {hits.type.field(i).name for i in range(hits.type.num_fields)}

    def group(name: str) -> pa.Array:
        if name not in names:
            return pa.nulls(count, pa.string())
        column = hits.field(name)
        return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)

    ids = {name: group(name) for name in ID_FIELDS}
    reasons = np.full(count, None, dtype=object)
    if route.token_fields:
        ids.update(_decode_tokens(route, group("token").to_pylist(), reasons))

    for name, column in ids.items():
        if f"(?P<{name}>{PRESET_ID})" in route.pattern and name not in route.token_fields:
            continue  # the group's own pattern matches valid ids only
        invalid = pc.invert(pc.match_substring_regex(column, VALID_ID.pattern)).fill_null(False)
        invalid_np = np.asarray(invalid) & (reasons == None)  # noqa: E711 (numpy element-wise)
        reasons[invalid_np] = (f"invalid id: {name} is empty, too long or contains characters an "
                               "id cannot have")

    event = pa.array([route.event] * count, pa.string())
    if route.open_link_ids:
        is_pixel = pc.is_in(ids["link_id"], value_set=pa.array(route.open_link_ids)).fill_null(False)
        event = pc.if_else(is_pixel, "open", event)
        ids["link_id"] = pc.if_else(is_pixel, pa.scalar(None, pa.string()), ids["link_id"])

    url = group("url")
    if "url" in names:
        url = pa.array([unquote(u) if u else None for u in url.to_pylist()], pa.string())

    valid = reasons == None  # noqa: E711 (numpy element-wise)
    mask = pa.array(valid)
    columns = {"event_type": event.filter(mask), "url": url.filter(mask),
               **{name: column.filter(mask) for name, column in ids.items()}}
    return _RoutedRows(positions[valid], columns, positions[~valid], list(reasons[~valid]))


def _decode_tokens(route: Route, tokens: list[str | None],
                   reasons: np.ndarray) -> dict[str, pa.Array]:
    decoded: dict[str, list[str | None]] = {name: [None] * len(tokens) for name in route.token_fields}
    for i, token in enumerate(tokens):
        try:
            if not token:
                raise TokenError("empty token")
            values = route.decode_token(token)
        except TokenError as exc:
            reasons[i] = f"token does not decode: {exc}"
            continue
        for name, value in values.items():
            decoded[name][i] = value
    return {name: pa.array(values, pa.string()) for name, values in decoded.items()}


def _parse_times(column: pa.Array, time_format: str | None) -> pa.Array:
    """Parse the time field; each distinct value is parsed once.

    A busy server writes the same second on many lines, so parsing the distinct values and
    mapping them back costs a fraction of parsing every line.
    """
    encoded = column.dictionary_encode()
    parsed = _parse_distinct_times(encoded.dictionary, time_format)
    return parsed.take(encoded.indices)


def _parse_distinct_times(column: pa.Array, time_format: str | None) -> pa.Array:
    if time_format == "clf":
        inner = pc.utf8_slice_codeunits(column, 1, -1)
        parsed = pc.strptime(inner, format="%d/%b/%Y:%H:%M:%S %z", unit="us", error_is_null=True)
        local = pc.strptime(pc.utf8_slice_codeunits(inner, 0, 20), format="%d/%b/%Y:%H:%M:%S",
                            unit="us", error_is_null=True)
        day = _to_int(pc.utf8_slice_codeunits(inner, 0, 2), max_digits=2)
        valid = pc.and_(pc.match_substring_regex(inner, CLF_TIME), pc.equal(pc.day(local), day))
        return pc.if_else(valid.fill_null(False), parsed, pa.scalar(None, parsed.type))
    if time_format in ("sec", "msec", "usec"):
        scale = {"sec": 1_000_000, "msec": 1_000, "usec": 1}[time_format]
        numbers = _to_int(column, max_digits=16)
        return pc.cast(pc.multiply(numbers, scale), pa.timestamp("us", tz="UTC"))
    return pc.strptime(column, format=time_format, unit="us", error_is_null=True)


def _method_and_target(selected: dict[str, pa.Array],
                       escapable: np.ndarray) -> tuple[pa.Array, pa.Array, pa.Array | None]:
    """Return the method, the request target and the protocol (None when the format has no %r)."""
    if "request" in selected:
        request = _unescape_quoted(selected["request"], escapable)
        parts = pc.extract_regex(request, REQUEST_LINE)
        valid = parts.is_valid()
        nothing = pa.scalar(None, pa.string())
        method = pc.if_else(valid, parts.field("method"), nothing)
        target = pc.if_else(valid, parts.field("target"), nothing)
        # extract_regex gives an unmatched optional group as "", which is what HTTP/0.9 logs.
        protocol = pc.if_else(valid, parts.field("protocol"), nothing)
        return method, target, protocol
    path = selected["path"]
    query = selected.get("query")
    target = pc.binary_join_element_wise(path, query, "") if query is not None else path
    return selected.get("method", pa.nulls(len(path), pa.string())), target, None


def _request_anomaly(target: pa.Array, protocol: pa.Array | None) -> pa.Array | None:
    """Name what makes each request line unlike a mail client's, or null.

    The first that applies wins: no_protocol, unknown_protocol, absolute_form, raw_bytes.
    """
    if protocol is None:
        return None
    nothing = pa.scalar(None, pa.string())
    anomaly = pc.if_else(pc.match_substring_regex(target, RAW_BYTES).fill_null(False),
                         pa.scalar("raw_bytes"), nothing)
    anomaly = pc.if_else(pc.match_substring_regex(target, ABSOLUTE_FORM).fill_null(False),
                         pa.scalar("absolute_form"), anomaly)
    known = pc.is_in(protocol, value_set=pa.array(CLIENT_PROTOCOLS)).fill_null(True)
    anomaly = pc.if_else(known, anomaly, pa.scalar("unknown_protocol"))
    missing = pc.equal(protocol, "").fill_null(False)
    return pc.if_else(missing, pa.scalar("no_protocol"), anomaly)


def normalise_target(target: str) -> str:
    """Normalise a request target the way the tracking server resolved it.

    Absolute-form targets lose their scheme and authority; percent-escapes of unreserved
    characters are decoded (RFC 3986, section 6.2.2.2); repeated slashes merge (httpd's
    MergeSlashes, on by default); dot segments are removed (RFC 3986, section 5.2.4).
    """
    absolute = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?]*", target)
    if absolute:
        target = target[absolute.end():] or "/"
    path, question, query = target.partition("?")
    path = UNRESERVED.sub(lambda m: chr(int(m.group(1), 16)), path)
    path = re.sub(r"/{2,}", "/", path)

    segments: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if segments:
                segments.pop()
        elif segment != ".":
            segments.append(segment)
    path = "/" + "/".join(segments)
    return path + question + query


def _normalise_targets(target: pa.Array) -> pa.Array:
    flagged = pc.match_substring_regex(target, NEEDS_NORMALISING).fill_null(False)
    if not pc.any(flagged).as_py():
        return target
    values = target.to_pylist()
    for i in np.flatnonzero(np.asarray(flagged)).tolist():
        values[i] = normalise_target(values[i])
    return pa.array(values, pa.string())


def _to_int(column: pa.Array, max_digits: int, type_: pa.DataType = INT64) -> pa.Array:
    """Parse digit strings as integers; anything else, or too long to fit, becomes null.

    A log line may carry any digits in a numeric field (a status of 40000, a byte count beyond
    int64), and one such value must not fail the whole batch.
    """
    digits = pc.match_substring_regex(column, f"^[0-9]{{1,{max_digits}}}$").fill_null(False)
    return pc.cast(pc.if_else(digits, column, pa.scalar(None, pa.string())), type_)


def _null_dash(column: pa.Array) -> pa.Array:
    """Apache writes "-" for a missing value."""
    return pc.if_else(pc.equal(column, "-"), pa.scalar(None, column.type), column)


def _unescape_quoted(column: pa.Array, escapable: np.ndarray) -> pa.Array:
    if not escapable.any():
        return column
    escaped = pc.match_substring(column, "\\").fill_null(False)
    if not pc.any(escaped).as_py():
        return column
    # Only the rows with escapes leave Arrow; the rest of the column stays as it is.
    replacements = [unescape_apache(value) for value in column.filter(escaped).to_pylist()]
    return pc.replace_with_mask(column, escaped, pa.array(replacements, pa.string()))


def _no_rejects(ctx: SourceContext) -> pa.Table:
    empty = np.empty(0, dtype=np.int64)
    return build_rejects(ctx, empty, [], empty, [])


def _merge_rejects(ctx: SourceContext, batch: LineBatch, rows: np.ndarray, reasons: list[str],
                   token_rejects: list[tuple[int, str]]) -> pa.Table:
    all_rows = np.concatenate([rows, np.asarray([r for r, _ in token_rejects], dtype=np.int64)])
    all_reasons = reasons + [reason for _, reason in token_rejects]
    if len(all_rows) == 0:
        return _no_rejects(ctx)
    order = np.argsort(all_rows, kind="stable")
    all_rows = all_rows[order]
    all_reasons = [all_reasons[i] for i in order]
    return build_rejects(ctx, batch.offsets[all_rows], batch.lines.take(pa.array(all_rows)),
                         batch.line_bytes[all_rows], all_reasons)
