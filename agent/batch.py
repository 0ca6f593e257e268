"""A batch: the parse results of lines [first_offset, end_offset) of one file generation.

A batch grows while lines are read, is sealed into the spool as one Parquet file per UTC day
(events and rejects apart) under a name fixed by (host, source, generation, first offset), and
then starts again at its end offset.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import schema, spool
from .config import SourceConfig
from .parsers.access_log import parse_address, truncate_address
from .parsers.base import LineBatch, Parser, ParseResult, SourceContext, build_rejects
from .parsers.postfix import LOCAL_PART_RE
from .tailer import Generation

log = logging.getLogger(__name__)

# Events outside these instants are rejected: no tracked email predates 1970, and a far-future
# year is a corrupt or hostile line.
MIN_EVENT_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_EVENT_TIME = datetime(2200, 1, 1, tzinfo=UTC)
# Runs of the characters addresses are written with. Only runs that contain a '.' or two ':'
# are searched with the candidate patterns below, which keeps long lines cheap to mask.
ADDRESS_RUN = re.compile(r"[0-9A-Fa-f:.]{3,}")
# Candidates for IP addresses in a rejected line. Each is parsed with ipaddress before it is
# masked, so times (20:00:00) and version numbers stay as they are.
IPV4_CANDIDATE = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9]|\.[0-9])")
IPV6_CANDIDATE = re.compile(r"(?<![0-9A-Za-z:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"
                            r"(?:(?<=:)(?:[0-9]{1,3}\.){3}[0-9]{1,3})?(?![0-9A-Za-z]|\.[0-9])")
# The text that replaces an address in a rejected line under client_ip = "drop".
DROPPED_ADDRESS = "-"


@dataclass(frozen=True)
class Sealed:
    name: str
    events: int
    rejects: int
    events_by_type: dict[str, int]


class Batch:
    def __init__(self, host: str, source: SourceConfig, generation: Generation, parser: Parser,
                 max_line_bytes: int):
        self.host = host
        self.source = source
        self.generation = generation
        self.parser = parser
        self.max_line_bytes = max_line_bytes
        self.first_offset = generation.offset
        self.end_offset = generation.offset
        self.changed = False
        self._reset_contents()

    def _reset_contents(self) -> None:
        self.events: list[pa.Table] = []
        self.rejects: list[pa.Table] = []
        self.counters: dict[str, int] = {}
        self.size_bytes = 0

    def context(self) -> SourceContext:
        return SourceContext(host=self.host, source=self.source.name, kind=self.source.kind,
                             path=self.generation.path, generation=self.generation.generation,
                             ingest_time=datetime.now(UTC))

    def touch(self, end_offset: int) -> None:
        """Move the end of the batch; a batch that only marks its file complete still commits."""
        self.end_offset = end_offset
        self.changed = self.changed or self.generation.complete

    def add(self, lines: LineBatch, replaced: int) -> None:
        if len(lines) == 0:
            return
        too_long = lines.line_bytes > self.max_line_bytes
        if too_long.any():
            rows = np.flatnonzero(too_long)
            self._reject(lines, rows, f"line longer than max_line_bytes ({self.max_line_bytes})")
            self.count({"long_lines": len(rows)})
            keep = ~too_long
            lines = LineBatch(lines.lines.filter(pa.array(keep)), lines.offsets[keep],
                              lines.line_bytes[keep])

        result = self._parse(lines)
        events = self._reject_times_out_of_range(result.events, lines)
        if self.source.optout is not None:
            events, dropped = self.source.optout.drop(events)
            self.count({"opted_out": dropped})
        self.events.append(events)
        self.rejects.append(result.rejects)
        self.count(result.counters)
        line_bytes = int(lines.line_bytes.sum())
        self.count({"bytes_read": line_bytes + len(lines), "replaced_characters": replaced})
        self.size_bytes += line_bytes

    def _parse(self, lines: LineBatch) -> ParseResult:
        """Parse a batch; if the parser fails on it, parse line by line and reject the culprits.

        Parsers are written never to raise, but a bug triggered by one hostile line must not
        stop the agent or lose the other lines of its batch.
        """
        try:
            return self.parser.parse(lines, self.context())
        except Exception as exc:  # noqa: BLE001 (any parser bug; the lines are kept)
            log.error("source %s: parser failed on a batch of %d lines of %s, parsing them one "
                      "by one: %s: %s", self.source.name, len(lines), self.generation.path,
                      type(exc).__name__, exc)

        events, rejects, counters = [], [], {}
        for i in range(len(lines)):
            line = LineBatch(lines.lines.slice(i, 1), lines.offsets[i:i + 1],
                             lines.line_bytes[i:i + 1])
            try:
                result = self.parser.parse(line, self.context())
            except Exception as exc:  # noqa: BLE001 (see above)
                reason = f"parser error: {type(exc).__name__}: {exc}"[:500]
                result = ParseResult(schema.empty_events(),
                                     build_rejects(self.context(), line.offsets, line.lines,
                                                   line.line_bytes, [reason]),
                                     {"lines": 1, "rejected": 1, "parser_errors": 1})
            events.append(result.events)
            rejects.append(result.rejects)
            for name, value in result.counters.items():
                counters[name] = counters.get(name, 0) + value
        return ParseResult(pa.concat_tables(events), pa.concat_tables(rejects), counters)

    def _reject_times_out_of_range(self, events: pa.Table, lines: LineBatch) -> pa.Table:
        """Move events dated outside MIN_EVENT_TIME..MAX_EVENT_TIME to the rejects.

        A line may carry any date (year 0000, 9999); such a time names no real event and would
        not fit a partition or a Python date later on.
        """
        times = events["event_time"]
        valid = pc.and_(pc.greater_equal(times, pa.scalar(MIN_EVENT_TIME, schema.TIMESTAMP)),
                        pc.less(times, pa.scalar(MAX_EVENT_TIME, schema.TIMESTAMP)))
        valid_np = np.asarray(valid.fill_null(False))
        if valid_np.all():
            return events

        bad_offsets = np.unique(np.asarray(events["source_offset"])[~valid_np])
        rows = np.searchsorted(lines.offsets, bad_offsets)
        self._reject(lines, rows, f"event time outside {MIN_EVENT_TIME.year} to "
                                  f"{MAX_EVENT_TIME.year - 1}")
        return events.filter(pa.array(valid_np))

    def reject_long_line(self, start: int, head: bytes, length: int) -> None:
        """Reject a line longer than max_line_bytes whose rest was skipped unread."""
        text = head.decode("utf-8", errors="replace")
        line = LineBatch(pa.array([text], pa.string()), np.array([start]), np.array([length]))
        self._reject(line, np.array([0]),
                     f"line longer than max_line_bytes ({self.max_line_bytes})")
        self.count({"long_lines": 1, "lines": 1})

    def _reject(self, lines: LineBatch, rows: np.ndarray, reason: str) -> None:
        self.rejects.append(build_rejects(self.context(), lines.offsets[rows],
                                          lines.lines.take(pa.array(rows)),
                                          lines.line_bytes[rows], [reason] * len(rows)))
        self.count({"rejected": len(rows)})

    def count(self, counters: dict[str, int]) -> None:
        for name, value in counters.items():
            self.counters[name] = self.counters.get(name, 0) + int(value)

    def seal(self, state_dir: str) -> Sealed:
        """Write the batch into the spool, durably; the caller commits the checkpoint next."""
        events = pa.concat_tables(self.events) if self.events else schema.empty_events()
        rejects = (pa.concat_tables(self.rejects) if self.rejects
                   else schema.REJECT_SCHEMA.empty_table())
        rejects = mask_reject_lines(rejects, self.source)
        name = schema.batch_file_name(self.host, self.source.name, self.generation.generation,
                                      self.first_offset)
        spool.write_batch(state_dir, schema.EVENTS_DIR, events, "event_time", name)
        spool.write_batch(state_dir, schema.REJECTS_DIR, rejects, "ingest_time", name)
        log.info("source %s: sealed batch %s (bytes %d to %d of %s): %d events, %d rejects",
                 self.source.name, name, self.first_offset, self.end_offset, self.generation.path,
                 events.num_rows, rejects.num_rows)
        by_type = {item["values"]: item["counts"]
                   for item in pc.value_counts(events["event_type"]).to_pylist()}
        return Sealed(name, events.num_rows, rejects.num_rows, by_type)

    def reset(self) -> None:
        self.first_offset = self.end_offset
        self.changed = False
        self._reset_contents()


def mask_reject_lines(rejects: pa.Table, source: SourceConfig) -> pa.Table:
    """Mask personal data in the raw lines of rejects as the parsers do in events.

    IP addresses follow [agent] client_ip: truncated to /24 and /48, or replaced by "-", or
    kept. In lines of MTA sources the local parts of email addresses become "*", as in stored
    diagnostics, because events keep only the recipient domain.
    """
    mask_addresses = source.client_ip != "keep"
    mask_local_parts = source.kind != "access_log"
    if rejects.num_rows == 0 or not (mask_addresses or mask_local_parts):
        return rejects

    lines = rejects["line"].combine_chunks()
    if mask_local_parts:
        # RE2 through pyarrow, which runs in linear time on hostile lines like the parsers' own
        # masking of diagnostics.
        lines = pc.replace_substring_regex(lines, LOCAL_PART_RE, "*@")
    if mask_addresses:
        lines = pa.array([mask_ip_addresses(line, source.client_ip) for line in lines.to_pylist()],
                         pa.string())
    column = rejects.schema.get_field_index("line")
    return rejects.set_column(column, rejects.schema.field(column), lines)


def mask_ip_addresses(text: str, mode: str) -> str:
    """Truncate (mode "truncate") or replace (mode "drop") every IPv4 and IPv6 address in text."""
    def mask(match: re.Match[str]) -> str:
        # A colon right after an IPv6 address ("2001:db8::1: message") is part of the candidate.
        candidate = match.group(0)
        address = parse_address(candidate) or parse_address(candidate.rstrip(":"))
        if address is None:
            return candidate
        suffix = candidate[len(candidate.rstrip(":")):] if parse_address(candidate) is None else ""
        masked = DROPPED_ADDRESS if mode == "drop" else truncate_address(address)
        return f"{masked}{suffix}"

    def mask_run(match: re.Match[str]) -> str:
        run = match.group(0)
        if "." not in run and run.count(":") < 2:
            return run
        return IPV4_CANDIDATE.sub(mask, IPV6_CANDIDATE.sub(mask, run))

    return ADDRESS_RUN.sub(mask_run, text)
