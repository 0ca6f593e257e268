"""Parse Postfix logs into delivery events (sent, deferred, bounced, expired, rejected).

Postfix spreads one message over several lines keyed by its queue id:

    cleanup:  QID: message-id=<...>
    qmgr:     QID: from=<sender>, size=N, nrcpt=N (queue active)
    smtp etc: QID: to=<rcpt>, relay=..., delay=..., delays=..., dsn=X.Y.Z, status=sent (text)
    qmgr:     QID: from=<sender>, status=expired, returned to sender
    qmgr:     QID: removed

The syslog header, the timestamp and the kind of each line are read for the whole batch with
pyarrow.compute. Only lines that carry a queue id go through a Python loop, which joins them with
the queue state (queue id -> message-id, sender, ids, recipients still deferred). That state
crosses batches and files and survives a restart through snapshot() and restore().

Both timestamp styles are read: `Mon DD HH:MM:SS` (postlogd, rsyslog's traditional format),
which has no year and no zone, and RFC 3339 with a fraction and an offset (rsyslog's default).
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import UTC, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import schema
from ..bounce import ADDRESS_RE, classify, compile_extra_rules, normalise_diagnostic
from ..routes import VALID_ID
from .base import LineBatch, ParseResult, SourceContext, build_events, build_rejects

logger = logging.getLogger(__name__)

HEADER_RE = (
    r"^(?:(?P<month>[A-Z][a-z]{2}) (?P<day>[ 0-9]?[0-9]) (?P<clock>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"|(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ](?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]{1,9}))?(?P<zone>[Zz]|[+-][0-9]{2}:[0-9]{2}))"
    r" (?P<host>[^\s]+) (?P<program>[^\s\[:]+)(?:\[(?P<pid>[0-9]+)\])?: (?P<message>.*)$"
)
# Short queue ids are upper-case hex. Long ids (enable_long_queue_ids) are, per Postfix's
# src/global/mail_queue.h, at least 10 time characters from an alphabet without vowels, a 'z',
# then the inode number in the same alphabet without 'z'.
QUEUE_ID_RE = (
    r"^(?P<queue_id>[0-9A-F]{6,12}"
    r"|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,}z[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-y]+|NOQUEUE): "
)
# The line kinds below are matched on the whole message, queue id included, because slicing it
# off would cost one more pass over every line.
QUEUE_PREFIX = r"^[0-9A-Za-z]+: "
STATUS_RE = (
    QUEUE_PREFIX
    + r"to=<(?P<to>.*?)>, (?:orig_to=<.*?>, )?relay=(?P<relay>[^,]*), (?:[a-z_]+=[^,]*, )*"
    r"dsn=(?P<dsn>[0-9]\.[0-9]{1,3}\.[0-9]{1,3}), status=(?P<status>[a-z]+)(?: \((?P<text>.*)\))?$"
)
QMGR_FROM_RE = QUEUE_PREFIX + r"from=<(?P<sender>.*?)>, (?:size=[0-9]+|(?P<expired>status=expired))"
MESSAGE_ID_RE = QUEUE_PREFIX + r"message-id=(?P<message_id>.*)$"
REMOVED_RE = QUEUE_PREFIX + r"removed$"
REJECT_RE = (
    QUEUE_PREFIX + r"reject: RCPT from [^\s\[]*\[[^\]]*\](?::[0-9]+)?: (?P<reply>.*?); "
    r"from=<(?P<sender>.*?)> to=<(?P<to>.*?)>"
)
# The reply code is at the start of a reply or after "said:". A text such as
# "connect to 127.0.0.1[...]:2526" has digits but no reply code.
SMTP_CODE_RE = re.compile(r"(?:^|said: )([245][0-9]{2})(?:[ -]|$)")
REPLY_DSN_RE = re.compile(r"^[245][0-9]{2}[ -]([245]\.[0-9]{1,3}\.[0-9]{1,3})\b")
# Diagnostics quote the recipient, so its local part is replaced and no full address is stored.
LOCAL_PART_RE = r"[^\s<>()\[\]@,;:\"]+@"
LOCAL_PART_PY_RE = re.compile(LOCAL_PART_RE)

OUTCOME_STATUSES = ("sent", "deferred", "bounced")
STATE_VERSION = 1
# Postfix returns a message after maximal_queue_lifetime (5 days by default), and a deferred
# message is retried at least every maximal_backoff_time (4000 s by default). A queue id that no
# line mentioned for a week is gone: `postsuper -d` deletes messages without logging their ids.
DEFAULT_MAX_QUEUE_AGE_S = 7 * 86400
DEFAULT_MAX_QUEUE_ENTRIES = 1_000_000
EVICTION_INTERVAL_S = 3600
MAX_BOUNCE_CACHE_ENTRIES = 10_000


class QueueJoin:
    """The shared part of the stateful MTA parsers: ids from a message's keys, eviction of stale
    entries, cached bounce classification and the event table.

    A subclass sets STATE_NAME and KEY_NOUN for its log messages and keeps in self._queue one
    entry per message, keyed by the MTA's id.
    """

    STATE_NAME = "postfix"
    KEY_NOUN = "queue ids"

    def __init__(self, cfg: Any) -> None:
        self.timezone = cfg.timezone
        self._message_id_re = _compile_id_pattern(cfg.message_id_pattern, "message_id_pattern")
        self._sender_re = _compile_id_pattern(cfg.envelope_sender_pattern,
                                              "envelope_sender_pattern")
        self._bounce_rules = compile_extra_rules(getattr(cfg, "bounce_rules", None))
        self.max_queue_age_s = int(getattr(cfg, "max_queue_age_s", DEFAULT_MAX_QUEUE_AGE_S))
        self.max_queue_entries = int(getattr(cfg, "max_queue_entries", DEFAULT_MAX_QUEUE_ENTRIES))
        self._queue: dict[str, dict[str, Any]] = {}
        self._bounce_cache: dict[tuple, tuple[str | None, str | None]] = {}
        self._newest_s = 0
        self._evicted_at_s = 0

    def snapshot(self) -> dict[str, Any]:
        """Return the queue state as JSON-serialisable data that shares nothing with the parser."""
        queue = {key: _copy_entry(entry) for key, entry in self._queue.items()}
        return {"version": STATE_VERSION, "newest_s": self._newest_s, "queue": queue}

    def _resolve_ids(self, entry: dict[str, Any]) -> None:
        # A VERP envelope sender is the best key: it also reaches asynchronous bounces, which
        # carry the sender but not the Message-ID. The Message-ID comes next.
        ids = _match_ids(self._sender_re, entry["sender"])
        join_key = "envelope_sender"
        if ids is None:
            ids = _match_ids(self._message_id_re, entry["message_id"])
            join_key = "message_id"
        entry["ids"] = ids
        entry["join_key"] = join_key if ids is not None else None

    def _evict(self) -> None:
        """Drop entries that no line mentioned for max_queue_age_s, and cap the entry count."""
        if self._newest_s - self._evicted_at_s >= EVICTION_INTERVAL_S:
            self._evicted_at_s = self._newest_s
            cutoff = self._newest_s - self.max_queue_age_s
            stale = [qid for qid, entry in self._queue.items() if entry["seen_s"] < cutoff]
            for qid in stale:
                del self._queue[qid]
            if stale:
                logger.info("%s state: dropped %d %s not seen for %d s", self.STATE_NAME, len(stale),
                            self.KEY_NOUN,
                            self.max_queue_age_s)

        excess = len(self._queue) - self.max_queue_entries
        if excess > 0:
            oldest = sorted(self._queue, key=lambda qid: self._queue[qid]["seen_s"])[:excess]
            for qid in oldest:
                del self._queue[qid]
            logger.warning("%s state: dropped the %d oldest %s to stay under %d entries",
                           self.STATE_NAME, excess, self.KEY_NOUN, self.max_queue_entries)

    def _classify(self, status: str, dsn: str | None, smtp_code: int | None,
                  text: str | None) -> tuple[str | None, str | None]:
        # Diagnostics differ mostly by the quoted address, which classify() ignores anyway, so
        # caching on the text without addresses saves most of the regex work.
        stripped = ADDRESS_RE.sub("", text) if text else text
        key = (status, dsn, smtp_code, stripped)
        result = self._bounce_cache.get(key)
        if result is None:
            if len(self._bounce_cache) >= MAX_BOUNCE_CACHE_ENTRIES:
                self._bounce_cache.clear()
            result = classify(status, dsn, smtp_code, stripped, self._bounce_rules)
            self._bounce_cache[key] = result
        return result

    def _build_table(self, rows: _EventRows, batch: LineBatch, ctx: SourceContext,
                     times: pa.Array) -> pa.Table:
        line_index = np.asarray(rows.line, dtype=np.int64)
        bounce = [
            self._classify(status, dsn, code, text)
            for status, dsn, code, text in zip(rows.event_type, rows.dsn, rows.smtp_code,
                                                rows.diagnostic, strict=True)
        ]
        diagnostic = pa.array(rows.diagnostic, pa.string())
        columns = {
            "event_time": times.take(pa.array(line_index, pa.int64())),
            "event_type": rows.event_type,
            "delivery_id": rows.delivery_id,
            "recipient_id": rows.recipient_id,
            "link_id": rows.link_id,
            "queue_id": rows.queue_id,
            "message_id": rows.message_id,
            "recipient_domain": rows.recipient_domain,
            "recipient_key": rows.recipient_key,
            "smtp_code": rows.smtp_code,
            "dsn": rows.dsn,
            "bounce_type": [b[0] for b in bounce],
            "bounce_reason": [b[1] for b in bounce],
            "diagnostic": pc.replace_substring_regex(diagnostic, LOCAL_PART_RE, "*@"),
            "diagnostic_group": [normalise_diagnostic(text) for text in rows.diagnostic],
            "relay": rows.relay,
            "join_key": rows.join_key,
        }
        return build_events(columns, ctx, batch.offsets[line_index],
                            np.asarray(rows.index, dtype=np.int64))


class PostfixParser(QueueJoin):
    """Stateful parser of one Postfix log source.

    cfg provides timezone (an IANA name for timestamps without a zone), message_id_pattern and
    envelope_sender_pattern (regexes with the named groups delivery_id, recipient_id and
    optionally link_id). Optional attributes: bounce_rules, max_queue_age_s, max_queue_entries.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._zone = ZoneInfo(cfg.timezone)

    # -- state ---------------------------------------------------------------------------------

    def restore(self, state: dict[str, Any]) -> None:
        """Load a snapshot. Malformed entries are skipped and logged, never fatal."""
        self._queue = {}
        self._newest_s = 0
        found = state.get("version") if isinstance(state, dict) else type(state).__name__
        if not isinstance(state, dict) or found != STATE_VERSION:
            logger.warning("postfix state ignored: expected version %s, got %r", STATE_VERSION,
                           found)
            return

        skipped = 0
        for qid, entry in (state.get("queue") or {}).items():
            if _valid_entry(entry):
                self._queue[str(qid)] = _copy_entry(entry)
            else:
                skipped += 1
        if skipped:
            logger.warning("postfix state: skipped %d malformed queue entries", skipped)
        self._newest_s = int(state.get("newest_s") or 0)

    # -- parsing -------------------------------------------------------------------------------

    def parse(self, batch: LineBatch, ctx: SourceContext) -> ParseResult:
        """Turn a batch of complete lines into events and rejects, updating the queue state."""
        n = len(batch)
        counters = {"lines": n, "rejected": 0, "ignored": 0, "notifications": 0, "other_program": 0}
        header = pc.extract_regex(batch.lines, HEADER_RE)
        times = self._event_times(header, ctx)

        matched = np.asarray(header.is_valid(), dtype=bool)
        timed = np.asarray(times.is_valid(), dtype=bool)
        rejects = self._rejects(batch, ctx, matched, timed)
        counters["rejected"] = rejects.num_rows

        program = pc.struct_field(header, "program")
        postfix = np.asarray(pc.fill_null(pc.match_substring(program, "/"), False), dtype=bool)
        postfix &= matched & timed
        counters["other_program"] = int((matched & timed & ~postfix).sum())

        rows = _EventRows()
        times_us = np.asarray(pc.fill_null(times.cast(pa.int64()), 0), dtype=np.int64)
        self._join(pc.struct_field(header, "message"), np.flatnonzero(postfix), times_us, rows,
                   counters)
        self._evict()

        events = self._build_table(rows, batch, ctx, times)
        counters["events"] = events.num_rows
        outcome_lines = len(set(rows.line)) + counters["notifications"]
        counters["ignored"] = n - counters["rejected"] - outcome_lines
        return ParseResult(events=events, rejects=rejects, counters=counters)

    def _rejects(self, batch: LineBatch, ctx: SourceContext, matched: np.ndarray,
                 timed: np.ndarray) -> pa.Table:
        bad = np.flatnonzero(~(matched & timed))
        reasons = [
            "invalid timestamp" if matched[i]
            else "not a syslog line: expected a timestamp, a host and a program"
            for i in bad.tolist()
        ]
        return build_rejects(ctx, batch.offsets[bad], batch.lines.take(pa.array(bad, pa.int64())),
                             batch.line_bytes[bad], reasons)

    # -- timestamps ----------------------------------------------------------------------------

    def _event_times(self, header: pa.StructArray, ctx: SourceContext) -> pa.Array:
        """Return each line's instant as timestamp[us, UTC], null where the header is invalid."""
        classic = self._classic_times(header, ctx)
        rfc3339 = _rfc3339_times(header)
        is_classic = pc.not_equal(pc.struct_field(header, "month"), "")
        return pc.if_else(is_classic, classic, rfc3339)

    def _classic_times(self, header: pa.StructArray, ctx: SourceContext) -> pa.Array:
        """Read `Mon DD HH:MM:SS` in the configured zone, choosing the year from ingest_time.

        The line is taken from the ingest year unless that puts it more than a day in the
        future, which happens for lines of 31 December read on 1 January.
        NOTE: in the hour repeated when DST ends, the earlier instant is chosen, because the
        line itself cannot tell which one it was.
        """
        ingest = ctx.ingest_time if ctx.ingest_time.tzinfo else ctx.ingest_time.replace(tzinfo=UTC)
        year = ingest.astimezone(self._zone).year
        limit = pa.scalar(ingest + timedelta(days=1), schema.TIMESTAMP)

        month = pc.struct_field(header, "month")
        day = pc.utf8_lpad(pc.utf8_trim_whitespace(pc.struct_field(header, "day")), 2, "0")
        clock = pc.struct_field(header, "clock")
        current = self._local_times(year, month, day, clock)
        previous = self._local_times(year - 1, month, day, clock)

        use_previous = pc.fill_null(pc.greater(current, limit), True)
        return pc.if_else(use_previous, previous, current)

    def _local_times(self, year: int, month: pa.Array, day: pa.Array, clock: pa.Array) -> pa.Array:
        text = pc.binary_join_element_wise(str(year), month, day, clock, " ")
        naive = pc.strptime(text, format="%Y %b %d %H:%M:%S", unit="us", error_is_null=True)
        # strptime rolls 29 February of a common year over to 1 March, so check the day.
        naive = _null_unless_day(naive, day)
        local = pc.assume_timezone(naive, timezone=self.timezone, ambiguous="earliest",
                                   nonexistent="latest")
        return local.cast(schema.TIMESTAMP)

    # -- joining lines by queue id ------------------------------------------------------------

    def _join(self, messages: pa.Array, postfix_rows: np.ndarray, times_us: np.ndarray,
              rows: _EventRows, counters: dict[str, int]) -> None:
        """Run the per-queue-id state machine over the lines that carry a queue id."""
        postfix_messages = messages.take(pa.array(postfix_rows, pa.int64()))
        queued = pc.extract_regex(postfix_messages, QUEUE_ID_RE)
        has_queue = np.asarray(queued.is_valid(), dtype=bool)
        line_rows = postfix_rows[has_queue]
        if len(line_rows) == 0:
            return

        queue_ids = pc.struct_field(queued, "queue_id").filter(pa.array(has_queue))
        kinds = _LineKinds(postfix_messages.filter(pa.array(has_queue)))
        seconds = (times_us[line_rows] // 1_000_000).tolist()
        if seconds:
            self._newest_s = max(self._newest_s, max(seconds))

        for pos, qid in enumerate(queue_ids.to_pylist()):
            line = int(line_rows[pos])
            entry = self._queue.get(qid)
            if entry is not None:
                entry["seen_s"] = seconds[pos]
            message_id = kinds.message_id[pos]
            if message_id is not None:
                self._on_message_id(qid, message_id, seconds[pos])
            elif kinds.sender[pos] is not None:
                self._on_sender(qid, kinds, pos, line, seconds[pos], rows, counters)
            elif kinds.status[pos] is not None:
                self._on_status(qid, kinds, pos, line, seconds[pos], rows, counters)
            elif kinds.removed[pos]:
                self._queue.pop(qid, None)
            elif kinds.reject_to[pos] is not None:
                self._on_reject(qid, kinds, pos, line, rows)

    def _on_message_id(self, qid: str, message_id: str, seen_s: int) -> None:
        # cleanup logs the message-id once, when the message enters the queue: a new message,
        # even when a reused short queue id still has state from a message whose end was missed.
        entry = _new_entry(seen_s)
        entry["message_id"] = message_id.strip() or None
        self._queue[qid] = entry
        self._resolve_ids(entry)

    def _on_sender(self, qid: str, kinds: _LineKinds, pos: int, line: int, seen_s: int,
                   rows: _EventRows, counters: dict[str, int]) -> None:
        entry = self._queue.setdefault(qid, _new_entry(seen_s))
        if entry["sender"] != kinds.sender[pos]:
            entry["sender"] = kinds.sender[pos]
            self._resolve_ids(entry)
        if kinds.expired[pos]:
            self._on_expired(qid, entry, line, rows, counters)

    def _on_expired(self, qid: str, entry: dict[str, Any], line: int, rows: _EventRows,
                    counters: dict[str, int]) -> None:
        """Close every recipient of the message that was still deferred, one event each."""
        deferred = entry["deferred"]
        entry["deferred"] = {}
        if entry["sender"] == "":
            counters["notifications"] += 1
            return

        # Without state (the deferrals were logged before the agent started) the expiry is still
        # an outcome: one event with no recipient domain.
        recipients = list(deferred.items()) or [(None, [None, None, None, None, None])]
        for index, (key, (domain, dsn, smtp_code, diagnostic, relay)) in enumerate(recipients):
            rows.add(line, index, "expired", entry, qid, domain, dsn, smtp_code, diagnostic, relay,
                     key)

    def _on_status(self, qid: str, kinds: _LineKinds, pos: int, line: int, seen_s: int,
                   rows: _EventRows, counters: dict[str, int]) -> None:
        status = kinds.status[pos]
        if status not in OUTCOME_STATUSES:
            return
        entry = self._queue.setdefault(qid, _new_entry(seen_s))
        if entry["sender"] == "":
            counters["notifications"] += 1
            return

        recipient = kinds.status_to[pos]
        domain = _domain_of(recipient)
        text = kinds.text[pos] or None
        smtp_code = _smtp_code(text)
        relay = kinds.relay[pos] or None
        key = _recipient_key(recipient)
        if status == "deferred":
            stored_text = LOCAL_PART_PY_RE.sub("*@", text) if text else None
            entry["deferred"][key] = [domain, kinds.dsn[pos], smtp_code, stored_text, relay]
        else:
            entry["deferred"].pop(key, None)
        rows.add(line, 0, status, entry, qid, domain, kinds.dsn[pos], smtp_code, text, relay,
                 key)

    def _on_reject(self, qid: str, kinds: _LineKinds, pos: int, line: int,
                   rows: _EventRows) -> None:
        # The message-id of a queued message is known only when cleanup logged it before this
        # reject, which is rare at RCPT time. The envelope sender on the line is the usual key.
        entry = self._queue.get(qid) if qid != "NOQUEUE" else None
        if entry is None or entry["join_key"] != "message_id":
            entry = _new_entry(0)
            entry["sender"] = kinds.reject_sender[pos]
            self._resolve_ids(entry)

        reply = kinds.reply[pos] or None
        dsn_match = REPLY_DSN_RE.match(reply) if reply else None
        dsn = dsn_match.group(1) if dsn_match else None
        domain = _domain_of(kinds.reject_to[pos])
        queue_id = None if qid == "NOQUEUE" else qid
        rows.add(line, 0, "rejected", entry, queue_id, domain, dsn, _smtp_code(reply), reply, None,
                 _recipient_key(kinds.reject_to[pos]))

    # -- output --------------------------------------------------------------------------------


class _LineKinds:
    """Fields of the queue-id lines, one list per field; None where a line is another kind."""

    def __init__(self, messages: pa.Array) -> None:
        message_id = pc.extract_regex(messages, MESSAGE_ID_RE)
        self.message_id = _field_or_none(message_id, "message_id")

        qmgr = pc.extract_regex(messages, QMGR_FROM_RE)
        self.sender = _field_or_none(qmgr, "sender")
        self.expired = [bool(v) for v in pc.struct_field(qmgr, "expired").to_pylist()]

        status = pc.extract_regex(messages, STATUS_RE)
        self.status = _field_or_none(status, "status")
        self.status_to = pc.struct_field(status, "to").to_pylist()
        self.relay = pc.struct_field(status, "relay").to_pylist()
        self.dsn = pc.struct_field(status, "dsn").to_pylist()
        self.text = pc.struct_field(status, "text").to_pylist()

        self.removed = pc.match_substring_regex(messages, REMOVED_RE).to_pylist()

        reject = pc.extract_regex(messages, REJECT_RE)
        self.reject_to = _field_or_none(reject, "to")
        self.reject_sender = pc.struct_field(reject, "sender").to_pylist()
        self.reply = pc.struct_field(reject, "reply").to_pylist()


class _EventRows:
    """Events collected by the join loop, one list per column."""

    def __init__(self) -> None:
        self.line: list[int] = []
        self.index: list[int] = []
        self.event_type: list[str] = []
        self.delivery_id: list[str | None] = []
        self.recipient_id: list[str | None] = []
        self.link_id: list[str | None] = []
        self.queue_id: list[str | None] = []
        self.message_id: list[str | None] = []
        self.recipient_domain: list[str | None] = []
        self.recipient_key: list[str | None] = []
        self.dsn: list[str | None] = []
        self.smtp_code: list[int | None] = []
        self.diagnostic: list[str | None] = []
        self.relay: list[str | None] = []
        self.join_key: list[str | None] = []

    def add(self, line: int, index: int, event_type: str, entry: dict[str, Any],
            queue_id: str | None, domain: str | None, dsn: str | None, smtp_code: int | None,
            diagnostic: str | None, relay: str | None, recipient_key: str | None) -> None:
        ids = entry["ids"] or (None, None, None)
        self.line.append(line)
        self.index.append(index)
        self.event_type.append(event_type)
        self.delivery_id.append(ids[0])
        self.recipient_id.append(ids[1])
        self.link_id.append(ids[2])
        self.queue_id.append(queue_id)
        self.message_id.append(entry["message_id"])
        self.recipient_domain.append(domain)
        self.recipient_key.append(recipient_key)
        self.dsn.append(dsn)
        self.smtp_code.append(smtp_code)
        self.diagnostic.append(diagnostic)
        self.relay.append(relay)
        self.join_key.append(entry["join_key"])


def _rfc3339_times(header: pa.StructArray) -> pa.Array:
    """Read RFC 3339 timestamps (`2026-12-04T19:34:32.053115+05:45`) as exact UTC instants."""
    date = pc.struct_field(header, "date")
    text = pc.binary_join_element_wise(date, pc.struct_field(header, "time"), " ")
    naive = pc.strptime(text, format="%Y-%m-%d %H:%M:%S", unit="us", error_is_null=True)
    naive = _null_unless_day(naive, pc.utf8_lpad(pc.utf8_slice_codeunits(date, 8, 10), 2, "0"))

    # Fractions beyond microseconds are cut, not rounded, like Arrow's own casts.
    fraction = pc.utf8_rpad(pc.struct_field(header, "fraction"), 6, "0")
    fraction_us = pc.utf8_slice_codeunits(fraction, 0, 6).cast(pa.int64())

    zone = pc.struct_field(header, "zone")
    zone = pc.if_else(pc.is_in(zone, pa.array(["Z", "z", ""])), "+00:00", zone)
    sign = pc.if_else(pc.starts_with(zone, "-"), -1, 1)
    hours = pc.utf8_slice_codeunits(zone, 1, 3).cast(pa.int64())
    minutes = pc.utf8_slice_codeunits(zone, 4, 6).cast(pa.int64())
    offset_us = pc.multiply(pc.multiply(sign, pc.add(pc.multiply(hours, 60), minutes)), 60_000_000)

    utc_us = pc.subtract(pc.add(naive.cast(pa.int64()), fraction_us), offset_us)
    return utc_us.cast(schema.TIMESTAMP)


def _null_unless_day(naive: pa.Array, day: pa.Array) -> pa.Array:
    same_day = pc.equal(pc.day(naive), day.cast(pa.int64()))
    return pc.if_else(pc.fill_null(same_day, False), naive, pa.scalar(None, naive.type))


def _compile_id_pattern(pattern: str | None, name: str) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    regex = re.compile(pattern)
    if "delivery_id" not in regex.groupindex or "recipient_id" not in regex.groupindex:
        raise ValueError(f"{name} must have the named groups delivery_id and recipient_id, "
                         f"got {pattern!r}")
    return regex


def _match_ids(regex: re.Pattern[str] | None, value: str | None) -> list[str | None] | None:
    if regex is None or not value:
        return None
    match = regex.search(value)
    if match is None:
        return None
    groups = match.groupdict()
    ids = [groups.get("delivery_id") or None, groups.get("recipient_id") or None,
           groups.get("link_id") or None]
    # Message-IDs and envelope senders come from the client that submitted the mail: an id that could
    # not be a real one ("../x", markup) is not used, and the event stays unattributed.
    if any(value is not None and not VALID_ID.match(value) for value in ids):
        return None
    return ids


def rows_to_events(rows: list[dict[str, Any]], bounce: list[tuple[str | None, str | None]],
                   batch: LineBatch, ctx: SourceContext) -> pa.Table:
    """Build the event table of the stateless MTA parsers from one dict per outcome.

    A row carries line (its index in the batch), event_time, event_type, ids, message_id,
    recipient_domain, recipient_key, smtp_code, dsn, diagnostic, relay and join_key, and may carry
    queue_id and index (several events of one line); bounce holds (bounce_type, bounce_reason).
    """
    line_index = np.asarray([row["line"] for row in rows], dtype=np.int64)
    ids = [row["ids"] or (None, None, None) for row in rows]
    columns = {
        "event_time": [row["event_time"] for row in rows],
        "event_type": [row["event_type"] for row in rows],
        "delivery_id": [i[0] for i in ids],
        "recipient_id": [i[1] for i in ids],
        "link_id": [i[2] for i in ids],
        "queue_id": [row.get("queue_id") for row in rows],
        "message_id": [row["message_id"] for row in rows],
        "recipient_domain": [row["recipient_domain"] for row in rows],
        "recipient_key": [row["recipient_key"] for row in rows],
        "smtp_code": [row["smtp_code"] for row in rows],
        "dsn": [row["dsn"] for row in rows],
        "bounce_type": [b[0] for b in bounce],
        "bounce_reason": [b[1] for b in bounce],
        "diagnostic": [LOCAL_PART_PY_RE.sub("*@", row["diagnostic"]) if row["diagnostic"]
                       else None for row in rows],
        "diagnostic_group": [normalise_diagnostic(row["diagnostic"]) for row in rows],
        "relay": [row["relay"] for row in rows],
        "join_key": [row["join_key"] for row in rows],
    }
    indexes = np.asarray([row.get("index", 0) for row in rows], dtype=np.int64)
    return build_events(columns, ctx, batch.offsets[line_index], indexes)


def _new_entry(seen_s: int) -> dict[str, Any]:
    return {"message_id": None, "sender": None, "ids": None, "join_key": None, "seen_s": seen_s,
            "deferred": {}}


def _copy_entry(entry: dict[str, Any]) -> dict[str, Any]:
    copy = dict(entry)
    copy["ids"] = list(entry["ids"]) if entry["ids"] is not None else None
    copy["deferred"] = {key: list(value) for key, value in entry["deferred"].items()}
    return copy


def _valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or set(entry) != set(_new_entry(0)):
        return False
    ids = entry["ids"]
    if ids is not None and not (isinstance(ids, list) and len(ids) == 3):
        return False
    deferred = entry["deferred"]
    return (isinstance(entry["seen_s"], int) and isinstance(deferred, dict)
            and all(isinstance(v, list) and len(v) == 5 for v in deferred.values()))


def _field_or_none(extracted: pa.StructArray, name: str) -> list[str | None]:
    """Return the field's values, None on rows where the regex did not match."""
    values = pc.struct_field(extracted, name)
    return pc.if_else(extracted.is_valid(), values, pa.scalar(None, values.type)).to_pylist()


def _domain_of(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rpartition("@")[2].lower() or None


def _recipient_key(address: str | None) -> str:
    # The state keeps a digest, not the address, so that a snapshot contains no recipient address.
    return hashlib.blake2b((address or "").lower().encode(), digest_size=8).hexdigest()


def _smtp_code(text: str | None) -> int | None:
    match = SMTP_CODE_RE.search(text) if text else None
    return int(match.group(1)) if match else None

