"""Parse Apache httpd and nginx access logs into tracking events.

The work happens on whole batches in Arrow: one extract_regex for the LogFormat, one strptime
for the times, one extract_regex per route. Python loops touch only the rare rows that need
them: values with Apache escapes, request targets that need normalising, and opaque tokens.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..logformat import CompiledFormat, compile_log_format, unescape_apache
from ..routes import ID_FIELDS, VALID_ID, Route, TokenError
from .base import LineBatch, ParseResult, SourceContext, build_events, build_rejects

log = logging.getLogger(__name__)

# Method, target and optional protocol; HTTP/0.9-style request lines have no protocol.
REQUEST_LINE = r"^(?P<method>[A-Z][A-Z0-9_-]{0,19}) (?P<target>[^ ]+)(?: HTTP/[0-9]+\.[0-9]+)?$"
# Targets that normalise_target() may change: absolute form, percent escapes, empty or dot
# segments.
NEEDS_NORMALISING = r"^[A-Za-z][A-Za-z0-9+.-]*://|%|//|/\.\.?(?:/|\?|$)"
UNRESERVED = re.compile(r"%(2[DdEe]|3[0-9]|[46][1-9A-Fa-f]|[57][0-9Aa]|5[Ff]|7[Ee])")
EMPTY_AS_NULL = ("referer", "user_agent", "location", "forwarded_for", "vhost", "client_ip")


class AccessLogParser:
    def __init__(self, cfg: Any):
        self.routes: tuple[Route, ...] = tuple(cfg.routes)
        self.format: CompiledFormat = compile_log_format(cfg.log_format)
        self.timezone = getattr(cfg, "timezone", "UTC")

    def snapshot(self) -> None:
        return None

    def restore(self, state: dict[str, Any]) -> None:
        del state

    def parse(self, batch: LineBatch, ctx: SourceContext) -> ParseResult:
        counters = {"lines": len(batch)}
        if len(batch) == 0:
            return ParseResult(build_events({}, ctx, batch.offsets), _no_rejects(ctx), counters)

        fields = pc.extract_regex(batch.lines, self.format.pattern)
        matched = np.asarray(fields.is_valid())
        columns = {name: fields.field(group) for group, name in self.format.fields.items()}
        times = _parse_times(columns["time"], self.format.time_format)
        timed = matched & np.asarray(times.is_valid().fill_null(False))

        reject_rows = np.flatnonzero(~timed)
        reasons = ["line does not match log_format" if not matched[i] else
                   "invalid time field" for i in reject_rows]
        counters["rejected"] = len(reject_rows)

        rows = np.flatnonzero(timed)
        events, token_rejects, route_counters = self._route(rows, columns, times, ctx, batch)
        counters.update(route_counters)

        rejects = _merge_rejects(ctx, batch, reject_rows, reasons, token_rejects)
        counters["rejected"] += len(token_rejects)
        return ParseResult(events, rejects, counters)

    def _route(self, rows: np.ndarray, columns: dict[str, pa.Array], times: pa.Array,
               ctx: SourceContext, batch: LineBatch):
        counters = {"not_successful": 0, "not_routed": 0, "events": 0}
        if len(rows) == 0:
            return build_events({}, ctx, rows), [], counters

        take = pa.array(rows)
        selected = {name: col.take(take) for name, col in columns.items()}
        status = pc.cast(_null_dash(selected["status"]), pa.int16(), safe=False)
        ok = np.asarray(pc.and_(pc.greater_equal(status, 200), pc.less(status, 400)).fill_null(False))
        counters["not_successful"] = int((~ok).sum())

        method, target = _method_and_target(selected)
        target = _normalise_targets(target)
        method_np = np.asarray(method.fill_null("").to_numpy(zero_copy_only=False))

        chosen_route = np.full(len(rows), -1, dtype=np.int64)
        groups: dict[str, np.ndarray] = {}
        for index, route in enumerate(self.routes):
            candidates = ok & (chosen_route < 0) & np.isin(method_np, route.methods)
            if not candidates.any():
                continue
            cand_idx = np.flatnonzero(candidates)
            extracted = pc.extract_regex(target.take(pa.array(cand_idx)), route.pattern)
            hit = np.asarray(extracted.is_valid().fill_null(False))
            if not hit.any():
                continue
            hit_idx = cand_idx[hit]
            chosen_route[hit_idx] = index
            hits = extracted.filter(pa.array(hit))
            for field_index in range(hits.type.num_fields):
                name = hits.type.field(field_index).name
                values = groups.setdefault(name, np.full(len(rows), None, dtype=object))
                values[hit_idx] = hits.field(field_index).to_numpy(zero_copy_only=False)
        counters["not_routed"] = int((ok & (chosen_route < 0)).sum())

        return self._events(rows, chosen_route, groups, selected, method, target, times, ctx,
                            batch, counters)

    def _events(self, rows, chosen_route, groups, selected, method, target, times, ctx, batch,
                counters):
        routed = np.flatnonzero(chosen_route >= 0)
        ids: dict[str, list[Any]] = {name: [] for name in ID_FIELDS}
        event_types: list[str] = []
        urls: list[Any] = []
        keep: list[int] = []
        token_rejects: list[tuple[int, str]] = []
        location = selected.get("location")
        location_np = (_unescape_quoted(_null_dash(location)).to_numpy(zero_copy_only=False)
                       if location is not None else None)

        for position in routed.tolist():
            route = self.routes[chosen_route[position]]
            values = {name: _group_value(groups, name, position) for name in groups}
            try:
                row_ids = _row_ids(route, values)
            except TokenError as exc:
                token_rejects.append((int(rows[position]), f"token does not decode: {exc}"))
                continue
            event = route.event
            if route.open_link_ids and row_ids.get("link_id") in route.open_link_ids:
                event, row_ids["link_id"] = "open", None
            url = location_np[position] if location_np is not None else None
            if url is None and values.get("url"):
                url = unquote(values["url"])
            keep.append(position)
            event_types.append(event)
            urls.append(url)
            for name in ID_FIELDS:
                ids[name].append(row_ids.get(name))

        counters["events"] = len(keep)
        keep_arr = pa.array(np.asarray(keep, dtype=np.int64))
        line_rows = rows[np.asarray(keep, dtype=np.int64)] if keep else rows[:0]
        columns: dict[str, Any] = {
            "event_time": times.take(pa.array(line_rows)),
            "event_type": event_types,
            "url": urls,
            "http_method": method.take(keep_arr),
            **ids,
        }
        for name in ("status", "client_ip", "user_agent", "referer", "forwarded_for", "vhost",
                     "response_bytes", "response_time_us"):
            if name not in selected:
                continue
            column = _null_dash(selected[name].take(keep_arr))
            if name in self.format.quoted:
                column = _unescape_quoted(column)
            if name in ("status", "response_bytes", "response_time_us"):
                column = pc.cast(column, pa.int64(), safe=False)
            columns["http_status" if name == "status" else name] = column
        events = build_events(columns, ctx, batch.offsets[line_rows])
        return events, token_rejects, counters


def _group_value(groups: dict[str, np.ndarray], name: str, position: int) -> str | None:
    value = groups[name][position]
    return value or None


def _row_ids(route: Route, values: dict[str, str | None]) -> dict[str, str | None]:
    row_ids: dict[str, str | None] = {name: values.get(name) for name in ID_FIELDS}
    token = values.get("token")
    if route.token_fields:
        if not token:
            raise TokenError("empty token")
        row_ids.update(route.decode_token(token))
    for name, value in row_ids.items():
        if value is not None and not VALID_ID.match(value):
            raise TokenError(f"{name} holds characters an id cannot have")
    return row_ids


def _parse_times(column: pa.Array, time_format: str | None) -> pa.Array:
    if time_format == "clf":
        inner = pc.utf8_slice_codeunits(column, 1, -1)
        return pc.strptime(inner, format="%d/%b/%Y:%H:%M:%S %z", unit="us", error_is_null=True)
    if time_format in ("sec", "msec", "usec"):
        scale = {"sec": 1_000_000, "msec": 1_000, "usec": 1}[time_format]
        numbers = pc.cast(column, pa.int64(), safe=False)
        return pc.cast(pc.multiply(numbers, scale), pa.timestamp("us", tz="UTC"))
    return pc.strptime(column, format=time_format, unit="us", error_is_null=True)


def _method_and_target(selected: dict[str, pa.Array]) -> tuple[pa.Array, pa.Array]:
    if "request" in selected:
        request = _unescape_quoted(selected["request"])
        parts = pc.extract_regex(request, REQUEST_LINE)
        valid = parts.is_valid()
        method = pc.if_else(valid, parts.field("method"), pa.scalar(None, pa.string()))
        target = pc.if_else(valid, parts.field("target"), pa.scalar(None, pa.string()))
        return method, target
    path = selected["path"]
    query = selected.get("query")
    target = pc.binary_join_element_wise(path, query, "") if query is not None else path
    return selected.get("method", pa.nulls(len(path), pa.string())), target


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


def _null_dash(column: pa.Array) -> pa.Array:
    """Apache writes "-" for a missing value."""
    return pc.if_else(pc.equal(column, "-"), pa.scalar(None, column.type), column)


def _unescape_quoted(column: pa.Array) -> pa.Array:
    escaped = pc.match_substring(column, "\\").fill_null(False)
    if not pc.any(escaped).as_py():
        return column
    values = column.to_pylist()
    for i in np.flatnonzero(np.asarray(escaped)).tolist():
        values[i] = unescape_apache(values[i])
    return pa.array(values, pa.string())


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
