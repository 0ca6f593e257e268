"""Parse the Exim main log into delivery events (sent, deferred, bounced, expired).

Exim writes one line per step of a message, keyed by its Exim message id:

    2026-12-04 21:12:04 1xZaZY-0004uW-08 <= bounce-c0ffee-a002@mailer.example U=root P=local
        S=410 id=c0ffee.a002.x1@mailer.example
    ... 1xZaZY-0004uW-08 => rcpt@example R=router T=transport H=host [ip] C="250 ..."
    ... 1xZaZY-0004uW-08 -> other-rcpt@example ...     (another address of the same delivery)
    ... 1xZaZY-0004uW-08 == rcpt@example R=... defer (-44) H=host [ip]: SMTP error ...: 452 ...
    ... 1xZaZY-0004uW-08 ** rcpt@example R=... H=host [ip]: SMTP error ...: 550 ...
    ... 1xZaZY-0004uW-08 ** rcpt@example: retry timeout exceeded
    ... 1xZaZY-0004uW-08 Completed

The timestamp is `YYYY-MM-DD HH:MM:SS`, with `.fff` when log_selector has +millisec and a
`+HHMM` offset when log_timezone is set; without an offset it is read in the configured zone.
Message ids are 16 characters up to Exim 4.96 (`1xZaZY-0004uW-08`) and 23 characters from
4.97 on (6 characters of time, 11 of process id, 4 of sub-second time).

As in the Postfix parser, the header and the line kinds are read for the whole batch with
pyarrow.compute, and a Python loop joins only the lines with a message id to the queue state
(message id -> Message-ID, envelope sender, ids, recipients still deferred). The state crosses
batches and survives a restart through snapshot() and restore().
"""

from __future__ import annotations

import logging
import re
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import schema
from .base import LineBatch, ParseResult, SourceContext, build_rejects

# The Postfix parser's helpers define the shared contract of MTA parsers: how ids are matched
# and validated, how a recipient is digested, and the event rows the join loop collects.
from .postfix import (
    LOCAL_PART_PY_RE,
    QueueJoin,
    _copy_entry,
    _domain_of,
    _EventRows,
    _new_entry,
    _null_unless_day,
    _recipient_key,
    _valid_entry,
)

logger = logging.getLogger(__name__)

HEADER_RE = (
    r"^(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2}) (?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]{1,6}))?(?: (?P<zone>[+-][0-9]{4}))?(?: \[[0-9]+\])?"
    r" (?P<message>.*)$"
)
EXIM_ID_RE = (
    r"^(?P<exim_id>[0-9A-Za-z]{6}-(?:[0-9A-Za-z]{6}-[0-9A-Za-z]{2}|[0-9A-Za-z]{11}-[0-9A-Za-z]{4}))"
    r" (?P<rest>.*)$"
)
ARRIVAL_RE = r"^<= (?P<sender>\S+)(?P<fields>.*)$"
MESSAGE_ID_FIELD_RE = r" id=(?P<message_id>\S+)"
# The address may be followed by "(parent)" for a generated address and "<original>" when the
# delivered address differs from the one the message was sent to. The diagnostic text follows
# the first ": "; the fields before it have none (an IPv6 or a port in H= has no space after ':').
OUTCOME_RE = (
    r"^(?P<flag>=>|->|>>|\*>|==|\*\*) (?P<address>\S*[^\s:])(?: \((?P<parent>[^)]*)\))?"
    r"(?: <(?P<original>[^>]*)>)?(?P<fields>.*?)(?:: (?P<text>.*))?$"
)
CONFIRMATION_RE = r' C="(?P<confirmation>(?:[^"\\]|\\.)*)"'
RELAY_RE = r" H=(?P<host>\S+)(?: \([^)]*\))? \[(?P<ip>[^\]]+)\](?::(?P<port>[0-9]+))?"
COMPLETED_RE = r"^Completed(?: |$)"

# An SMTP reply in a diagnostic follows ": " ("...after RCPT TO:<a@b>: 550 5.1.1 ...") or
# starts a confirmation ("250 2.0.0 Ok").
REPLY_RE = re.compile(r"(?:^|: )([245][0-9]{2})(?:[ -]|$)(?:([245]\.[0-9]{1,3}\.[0-9]{1,3})\b)?")
# A queue run that skips an address before its retry time makes no delivery attempt.
RETRY_SKIP_RE = re.compile(r"retry time not reached(?! for any host after a long failure)")
# Exim gives up on an address when its retry rule times out: either on a last attempt or when a
# host has failed for longer than the rule allows.
EXPIRY_RE = re.compile(r"retry timeout exceeded|after a long failure period")

SENT_FLAGS = ("=>", "->", ">>")
STATE_VERSION = 1
# The retry rule of Exim's default configuration gives up after 4 days. A message id that no
# line mentioned for a week is gone (removed with `exim -Mrm`, or its log lines were lost).
DEFAULT_MAX_QUEUE_AGE_S = 7 * 86400
DEFAULT_MAX_QUEUE_ENTRIES = 1_000_000
EVICTION_INTERVAL_S = 3600
MAX_BOUNCE_CACHE_ENTRIES = 10_000


class EximParser(QueueJoin):
    """Stateful parser of one Exim main log source.

    cfg provides timezone (an IANA name for lines without an offset), message_id_pattern and
    envelope_sender_pattern (regexes with the named groups delivery_id, recipient_id and
    optionally link_id). Optional attributes: bounce_rules, max_queue_age_s, max_queue_entries.
    """

    STATE_NAME = "exim"
    KEY_NOUN = "message ids"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        ZoneInfo(cfg.timezone)  # an unknown zone fails here, not at the first line

    # -- state ---------------------------------------------------------------------------------

    def restore(self, state: dict[str, Any]) -> None:
        """Load a snapshot. Malformed entries are skipped and logged, never fatal."""
        self._queue = {}
        self._newest_s = 0
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        if not isinstance(state, dict) or found != STATE_VERSION:
            logger.warning("exim state ignored: expected version %s, got %r", STATE_VERSION, found)
            return

        skipped = 0
        queue = state.get("queue")
        for exim_id, entry in (queue.items() if isinstance(queue, dict) else ()):
            if _valid_entry(entry):
                self._queue[str(exim_id)] = _copy_entry(entry)
            else:
                skipped += 1
        if skipped:
            logger.warning("exim state: skipped %d malformed queue entries", skipped)
        newest = state.get("newest_s")
        self._newest_s = newest if isinstance(newest, int) else 0

    # -- parsing -------------------------------------------------------------------------------

    def parse(self, batch: LineBatch, ctx: SourceContext) -> ParseResult:
        """Turn a batch of complete lines into events and rejects, updating the queue state."""
        n = len(batch)
        counters = {"lines": n, "rejected": 0, "ignored": 0, "notifications": 0,
                    "retry_skipped": 0}
        header = pc.extract_regex(batch.lines, HEADER_RE)
        times = self._event_times(header)

        matched = np.asarray(header.is_valid(), dtype=bool)
        timed = np.asarray(times.is_valid(), dtype=bool)
        # A message that spans lines (a panic, a long error) continues on indented lines.
        continued = np.asarray(pc.fill_null(pc.match_substring_regex(batch.lines, r"^[ \t]"),
                                            False), dtype=bool)
        rejects = self._rejects(batch, ctx, matched, timed, continued)
        counters["rejected"] = rejects.num_rows

        rows = _EventRows()
        times_us = np.asarray(pc.fill_null(times.cast(pa.int64()), 0), dtype=np.int64)
        self._join(pc.struct_field(header, "message"), np.flatnonzero(matched & timed), times_us,
                   rows, counters)
        self._evict()

        events = self._build_table(rows, batch, ctx, times)
        counters["events"] = events.num_rows
        outcome_lines = len(set(rows.line)) + counters["notifications"]
        counters["ignored"] = n - counters["rejected"] - outcome_lines
        return ParseResult(events=events, rejects=rejects, counters=counters)

    def _rejects(self, batch: LineBatch, ctx: SourceContext, matched: np.ndarray,
                 timed: np.ndarray, continued: np.ndarray) -> pa.Table:
        bad = np.flatnonzero(~(matched & timed) & ~continued)
        reasons = [
            "invalid timestamp" if matched[i]
            else "not an Exim main log line: expected a YYYY-MM-DD HH:MM:SS timestamp"
            for i in bad.tolist()
        ]
        return build_rejects(ctx, batch.offsets[bad], batch.lines.take(pa.array(bad, pa.int64())),
                             batch.line_bytes[bad], reasons)

    def _event_times(self, header: pa.StructArray) -> pa.Array:
        """Return each line's instant as timestamp[us, UTC], null where the header is invalid."""
        date = pc.struct_field(header, "date")
        text = pc.binary_join_element_wise(date, pc.struct_field(header, "time"), " ")
        naive = pc.strptime(text, format="%Y-%m-%d %H:%M:%S", unit="us", error_is_null=True)
        naive = _null_unless_day(naive, pc.utf8_slice_codeunits(date, 8, 10))

        fraction = pc.utf8_rpad(pc.struct_field(header, "fraction"), 6, "0")
        fraction_us = pc.utf8_slice_codeunits(fraction, 0, 6).cast(pa.int64())
        naive_us = pc.add(naive.cast(pa.int64()), fraction_us)

        # Lines with an offset are exact; the others are wall-clock time in the configured zone.
        zone = pc.struct_field(header, "zone")
        has_zone = pc.not_equal(zone, "")
        sign = pc.if_else(pc.starts_with(zone, "-"), -1, 1)
        hours = pc.utf8_slice_codeunits(pc.if_else(has_zone, zone, "+0000"), 1, 3).cast(pa.int64())
        minutes = pc.utf8_slice_codeunits(pc.if_else(has_zone, zone, "+0000"), 3, 5).cast(pa.int64())
        offset_us = pc.multiply(pc.multiply(sign, pc.add(pc.multiply(hours, 60), minutes)),
                                60_000_000)
        zoned = pc.subtract(naive_us, offset_us).cast(schema.TIMESTAMP)

        # NOTE: in the hour repeated when DST ends, the earlier instant is chosen, because a line
        # without an offset cannot tell which one it was.
        local = pc.assume_timezone(naive_us.cast(pa.timestamp("us")), timezone=self.timezone,
                                   ambiguous="earliest", nonexistent="latest")
        return pc.if_else(has_zone, zoned, local.cast(schema.TIMESTAMP))

    # -- joining lines by Exim message id ------------------------------------------------------

    def _join(self, messages: pa.Array, line_rows: np.ndarray, times_us: np.ndarray,
              rows: _EventRows, counters: dict[str, int]) -> None:
        """Run the per-message state machine over the lines that carry an Exim message id."""
        timed_messages = messages.take(pa.array(line_rows, pa.int64()))
        keyed = pc.extract_regex(timed_messages, EXIM_ID_RE)
        has_id = np.asarray(keyed.is_valid(), dtype=bool)
        line_rows = line_rows[has_id]
        if len(line_rows) == 0:
            return

        exim_ids = pc.struct_field(keyed, "exim_id").filter(pa.array(has_id)).to_pylist()
        kinds = _LineKinds(pc.struct_field(keyed, "rest").filter(pa.array(has_id)))
        seconds = (times_us[line_rows] // 1_000_000).tolist()
        self._newest_s = max(self._newest_s, max(seconds))

        for pos, exim_id in enumerate(exim_ids):
            line = int(line_rows[pos])
            entry = self._queue.get(exim_id)
            if entry is not None:
                entry["seen_s"] = seconds[pos]
            if kinds.sender[pos] is not None:
                self._on_arrival(exim_id, kinds, pos, seconds[pos])
            elif kinds.flag[pos] is not None:
                self._on_outcome(exim_id, kinds, pos, line, seconds[pos], rows, counters)
            elif kinds.completed[pos]:
                self._queue.pop(exim_id, None)

    def _on_arrival(self, exim_id: str, kinds: _LineKinds, pos: int, seen_s: int) -> None:
        entry = _new_entry(seen_s)
        sender = kinds.sender[pos]
        # Exim logs the null sender of a bounce or a delay warning as "<>".
        entry["sender"] = "" if sender == "<>" else sender
        entry["message_id"] = kinds.message_id[pos]
        self._queue[exim_id] = entry
        self._resolve_ids(entry)

    def _on_outcome(self, exim_id: str, kinds: _LineKinds, pos: int, line: int, seen_s: int,
                    rows: _EventRows, counters: dict[str, int]) -> None:
        flag = kinds.flag[pos]
        text = kinds.text[pos] or None
        if flag == "*>":
            return
        if flag == "==" and text and RETRY_SKIP_RE.search(text):
            counters["retry_skipped"] += 1
            return
        entry = self._queue.setdefault(exim_id, _new_entry(seen_s))
        if entry["sender"] == "":
            counters["notifications"] += 1
            return

        # The original address is the one the mailer sent to, so it is the one in the mailer's
        # records. The delivered address differs only after a redirect or a rewrite.
        address = kinds.original[pos] or kinds.address[pos]
        domain = _domain_of(address)
        key = _recipient_key(address)
        relay = kinds.relay[pos]
        if flag in SENT_FLAGS:
            entry["deferred"].pop(key, None)
            text = kinds.confirmation[pos]
            smtp_code, dsn = _reply_codes(text)
            rows.add(line, 0, "sent", entry, exim_id, domain, dsn, smtp_code, text, relay, key)
            return

        smtp_code, dsn = _reply_codes(text)
        if flag == "==":
            stored_text = LOCAL_PART_PY_RE.sub("*@", text) if text else None
            entry["deferred"][key] = [domain, dsn, smtp_code, stored_text, relay]
            rows.add(line, 0, "deferred", entry, exim_id, domain, dsn, smtp_code, text, relay, key)
            return

        last_deferral = entry["deferred"].pop(key, None)
        if text and EXPIRY_RE.search(text):
            # A bare "retry timeout exceeded" gives no cause, so the last deferral's reply is used.
            if smtp_code is None and last_deferral is not None:
                _, dsn, smtp_code, text, relay = last_deferral
            rows.add(line, 0, "expired", entry, exim_id, domain, dsn, smtp_code, text, relay, key)
            return
        rows.add(line, 0, "bounced", entry, exim_id, domain, dsn, smtp_code, text, relay, key)

    # -- output --------------------------------------------------------------------------------


class _LineKinds:
    """Fields of the message-id lines, one list per field; None where a line is another kind."""

    def __init__(self, rest: pa.Array) -> None:
        arrival = pc.extract_regex(rest, ARRIVAL_RE)
        self.sender = _field_or_none(arrival, "sender")
        message_id = pc.extract_regex(pc.struct_field(arrival, "fields"), MESSAGE_ID_FIELD_RE)
        self.message_id = _field_or_none(message_id, "message_id")

        outcome = pc.extract_regex(rest, OUTCOME_RE)
        self.flag = _field_or_none(outcome, "flag")
        self.address = pc.struct_field(outcome, "address").to_pylist()
        self.original = pc.struct_field(outcome, "original").to_pylist()
        self.text = pc.struct_field(outcome, "text").to_pylist()
        self.confirmation = _field_or_none(pc.extract_regex(rest, CONFIRMATION_RE),
                                           "confirmation")
        self.relay = _relays(pc.struct_field(outcome, "fields"))

        self.completed = pc.fill_null(pc.match_substring_regex(rest, COMPLETED_RE),
                                      False).to_pylist()


def _relays(fields: pa.Array) -> list[str | None]:
    """Return `host[ip]:port` from each line's H= field, like Postfix's relay column."""
    relay = pc.extract_regex(fields, RELAY_RE)
    port = pc.struct_field(relay, "port")
    text = pc.binary_join_element_wise(pc.struct_field(relay, "host"), "[",
                                       pc.struct_field(relay, "ip"), "]", "")
    text = pc.if_else(pc.equal(port, ""), text, pc.binary_join_element_wise(text, port, ":"))
    return pc.if_else(relay.is_valid(), text, pa.scalar(None, pa.string())).to_pylist()


def _field_or_none(extracted: pa.StructArray, name: str) -> list[str | None]:
    values = pc.struct_field(extracted, name)
    return pc.if_else(extracted.is_valid(), values, pa.scalar(None, values.type)).to_pylist()


def _reply_codes(text: str | None) -> tuple[int | None, str | None]:
    """Return the SMTP reply code and the enhanced status code quoted in a diagnostic."""
    match = REPLY_RE.search(text) if text else None
    if match is None:
        return None, None
    return int(match.group(1)), match.group(2)
