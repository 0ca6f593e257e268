"""Parse PowerMTA accounting files (CSV) into delivery events.

The column order depends on the accounting file's configuration, so each file starts with a
header row naming the columns (`type,timeLogged,orig,rcpt,...`). PowerMTA writes the header
again after a reload, and a new header applies to the rows that follow it. The header in force
is parser state: it crosses batches and survives a restart through snapshot() and restore().

Record types, from the first column: d delivered (sent), b bounced (bounced, or expired when
bounceCat is message-expired), t and tq transient (deferred), r received (no event), f feedback
loop (complaint), rb remote bounce (bounced), rs remote status (bounced, or deferred when its
dsnAction is delayed). Fields are quoted as in RFC 4180, so dsnDiag may contain commas and
doubled quotes. timeLogged is `YYYY-MM-DD HH:MM:SS+HHMM` in current versions and a Unix time in
older ones; a time without an offset is read in the configured zone.
"""

from __future__ import annotations

import csv
import logging
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from ..bounce import classify, compile_extra_rules
from .base import LineBatch, ParseResult, SourceContext, build_rejects

# The Postfix parser's helpers define the shared contract of MTA parsers: how ids are matched
# and validated, how a recipient is digested, and how diagnostics lose their local parts.
from .postfix import _compile_id_pattern, _domain_of, _match_ids, _recipient_key, rows_to_events

logger = logging.getLogger(__name__)

EVENT_TYPES = {"d": "sent", "b": "bounced", "t": "deferred", "tq": "deferred", "f": "complaint",
               "rb": "bounced", "rs": "bounced"}
NO_EVENT_TYPES = ("r",)
# PowerMTA's bounce categories and the bounce reason each one means. Categories not listed
# (other, message-expired and any new one) leave the reason to the diagnostic text and codes.
BOUNCE_CATEGORIES = {
    "bad-mailbox": "user_unknown",
    "bad-domain": "invalid_domain",
    "inactive-mailbox": "account_disabled",
    "quota-issues": "mailbox_full",
    "no-answer-from-host": "unreachable",
    "bad-connection": "unreachable",
    "routing-errors": "unreachable",
    "policy-related": "refused",
    "spam-related": "refused",
    "virus-related": "refused",
    "content-related": "refused",
    "relaying-issues": "refused",
    "invalid-sender": "refused",
    "protocol-errors": "other",
}
DSN_RE = re.compile(r"^([245]\.[0-9]{1,3}\.[0-9]{1,3})\b")
# dsnDiag is "smtp;550 5.1.1 ..." for a reply, or a text of PowerMTA's own.
DIAG_CODE_RE = re.compile(r"^(?:[a-z-]+;\s*)?([245][0-9]{2})(?:[ -]|$)")
DIAG_TYPE_RE = re.compile(r"^[a-z-]+;\s*")
OFFSET_TIME_RE = re.compile(
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]([0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?)"
    r"\s?(Z|[+-][0-9]{2}:?[0-9]{2})?$"
)
STATE_VERSION = 1
MESSAGE_ID_COLUMN = "header_message-id"


class PowerMtaParser:
    """Parser of one PowerMTA accounting file source; its state is the header row in force.

    cfg provides timezone, message_id_pattern (on a header_Message-Id column),
    envelope_sender_pattern (on orig) and job_id_pattern (on jobId, with at least the named
    group delivery_id).
    Optional attribute: bounce_rules.
    """

    def __init__(self, cfg: Any) -> None:
        self._zone = ZoneInfo(cfg.timezone)
        self._message_id_re = _compile_id_pattern(cfg.message_id_pattern, "message_id_pattern")
        self._sender_re = _compile_id_pattern(cfg.envelope_sender_pattern,
                                              "envelope_sender_pattern")
        self._job_id_re = _compile_job_id_pattern(getattr(cfg, "job_id_pattern", None))
        self._bounce_rules = compile_extra_rules(getattr(cfg, "bounce_rules", None))
        self._header: list[str] | None = None

    def snapshot(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "header": list(self._header) if self._header else None}

    def restore(self, state: dict[str, Any]) -> None:
        """Load a snapshot; a malformed one is logged and ignored, never fatal."""
        self._header = None
        header = state.get("header") if isinstance(state, dict) else None
        valid = (isinstance(state, dict) and state.get("version") == STATE_VERSION
                 and (header is None or (isinstance(header, list)
                                         and all(isinstance(name, str) for name in header))))
        if not valid:
            logger.warning("powermta state ignored: expected version %s with a list of column "
                           "names, got %r", STATE_VERSION, type(state).__name__)
            return
        self._header = list(header) if header else None

    def parse(self, batch: LineBatch, ctx: SourceContext) -> ParseResult:
        """Turn a batch of accounting file lines into events and rejects."""
        counters = {"lines": len(batch), "rejected": 0, "ignored": 0, "header_rows": 0,
                    "received": 0}
        rows: list[dict[str, Any]] = []
        rejected: list[tuple[int, str]] = []

        for line_index, line in enumerate(batch.lines.to_pylist()):
            try:
                fields = next(csv.reader([line or ""], strict=True))
            except (csv.Error, StopIteration) as exc:
                rejected.append((line_index, f"invalid CSV: {exc}"))
                continue
            if fields and fields[0].strip().lower() == "type":
                self._header = [name.strip() for name in fields]
                counters["header_rows"] += 1
                continue
            outcome = self._read_record(fields, line_index, counters)
            if isinstance(outcome, str):
                rejected.append((line_index, outcome))
            elif outcome is not None:
                rows.append(outcome)

        counters["rejected"] = len(rejected)
        counters["events"] = len(rows)
        counters["ignored"] = len(batch) - len(rows) - len(rejected) - counters["header_rows"]
        return ParseResult(events=self._build_table(rows, batch, ctx),
                           rejects=_rejects(rejected, batch, ctx), counters=counters)

    def _read_record(self, fields: list[str], line_index: int,
                     counters: dict[str, int]) -> dict[str, Any] | str | None:
        """Return an event row, None for a record without an event, or a reject reason."""
        if self._header is None:
            return "no header row before this record: expected a line starting with 'type,'"
        if len(fields) != len(self._header):
            return f"expected {len(self._header)} fields as in the header row, got {len(fields)}"
        record = {name.lower(): value for name, value in zip(self._header, fields, strict=True)}

        record_type = record["type"]
        if record_type in NO_EVENT_TYPES:
            counters["received"] += 1
            return None
        event_type = EVENT_TYPES.get(record_type)
        if event_type is None:
            return f"unknown record type {record_type[:20]!r}"
        time = self._read_time(record.get("timelogged", ""))
        if time is None:
            return f"invalid timeLogged {record.get('timelogged', '')[:40]!r}"

        action = record.get("dsnaction", "").lower()
        if record_type == "rs" and action == "delayed":
            event_type = "deferred"
        elif record_type == "rs" and action != "failed":
            return None
        if event_type == "bounced" and record.get("bouncecat") == "message-expired":
            event_type = "expired"
        return self._event_row(event_type, record, time, line_index)

    def _event_row(self, event_type: str, record: dict[str, str], time: datetime,
                   line_index: int) -> dict[str, Any]:
        recipient = record.get("rcpt") or None
        diagnostic = record.get("dsndiag") or None
        code_match = DIAG_CODE_RE.match(diagnostic) if diagnostic else None
        dsn_match = DSN_RE.match(record.get("dsnstatus", "").strip())
        message_id = record.get(MESSAGE_ID_COLUMN) or None
        ids, join_key = self._ids(message_id, record.get("orig"), record.get("jobid"))
        return {
            "line": line_index, "event_time": time, "event_type": event_type,
            "ids": ids, "join_key": join_key, "message_id": message_id,
            "recipient_domain": _domain_of(recipient), "recipient_key": _recipient_key(recipient),
            "smtp_code": int(code_match.group(1)) if code_match else None,
            "dsn": dsn_match.group(1) if dsn_match else None,
            "diagnostic": DIAG_TYPE_RE.sub("", diagnostic) if diagnostic else None,
            "relay": record.get("dsnmta") or None,
            "category": record.get("bouncecat") or None,
        }

    def _ids(self, message_id: str | None, sender: str | None,
             job_id: str | None) -> tuple[list[str | None] | None, str | None]:
        # Preference: a VERP envelope sender, the Message-ID, then the X-Job header (jobId).
        for regex, value, join_key in ((self._sender_re, sender, "envelope_sender"),
                                       (self._message_id_re, message_id, "message_id"),
                                       (self._job_id_re, job_id, "header")):
            ids = _match_ids(regex, value)
            if ids is not None:
                return ids, join_key
        return None, None

    def _read_time(self, text: str) -> datetime | None:
        text = text.strip()
        if text.isdigit():
            try:
                return datetime.fromtimestamp(int(text), UTC)
            except (ValueError, OverflowError, OSError):
                return None
        match = OFFSET_TIME_RE.match(text)
        if match is None:
            return None
        try:
            naive = datetime.fromisoformat(f"{match.group(1)} {match.group(2)}")
        except ValueError:
            return None
        zone = match.group(3)
        if zone is None:
            return naive.replace(tzinfo=self._zone).astimezone(UTC)
        if zone == "Z":
            return naive.replace(tzinfo=UTC)
        try:
            return datetime.fromisoformat(f"{match.group(1)} {match.group(2)}{zone}").astimezone(UTC)
        except ValueError:
            # An offset of 24 hours or more matches the pattern but is no valid UTC offset.
            return None

    def _classify(self, row: dict[str, Any]) -> tuple[str | None, str | None]:
        if row["event_type"] == "complaint":
            return None, None
        bounce_type, reason = classify(row["event_type"], row["dsn"], row["smtp_code"],
                                       row["diagnostic"], self._bounce_rules)
        category_reason = BOUNCE_CATEGORIES.get(row["category"] or "")
        if bounce_type is not None and category_reason is not None:
            reason = category_reason
        return bounce_type, reason

    def _build_table(self, rows: list[dict[str, Any]], batch: LineBatch, ctx: SourceContext):
        return rows_to_events(rows, [self._classify(row) for row in rows], batch, ctx)


def _compile_job_id_pattern(pattern: str | None) -> re.Pattern[str] | None:
    # A job is usually one delivery sent to many recipients, so recipient_id is optional here.
    if pattern is None:
        return None
    regex = re.compile(pattern)
    if "delivery_id" not in regex.groupindex:
        raise ValueError(f"job_id_pattern must have the named group delivery_id, got {pattern!r}")
    return regex


def _rejects(rejected: list[tuple[int, str]], batch: LineBatch, ctx: SourceContext):
    index = np.asarray([line for line, _ in rejected], dtype=np.int64)
    return build_rejects(ctx, batch.offsets[index], batch.lines.take(index),
                         batch.line_bytes[index], [reason for _, reason in rejected])
