"""Parse KumoMTA log records (one JSON object per line) into delivery events.

KumoMTA's local logger writes segment files compressed with zstd; decompress_segment() turns one
into the lines this parser reads. Record types: Delivery (sent), TransientFailure (deferred),
Bounce, AdminBounce and OOB (bounced; OOB is an asynchronous bounce), Expiration (expired),
Feedback (complaint). Reception, Rejection and Delay records make no event.

The fields used, as KumoMTA documents its log record: type, id (the spool id), sender,
recipient (a string, or a list in recent versions), timestamp (Unix seconds), response.code,
response.enhanced_code {class, subject, detail}, response.content, peer_address {name, addr},
bounce_classification, headers (the headers the logger is configured to keep) and meta (the
meta fields the logger is configured to keep, which the mailer sets at injection).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..bounce import classify, compile_extra_rules
from ..routes import VALID_ID
from .base import LineBatch, ParseResult, SourceContext, build_rejects

# The Postfix parser's helpers define the shared contract of MTA parsers: how ids are matched
# and validated, how a recipient is digested, and how diagnostics lose their local parts.
from .postfix import _compile_id_pattern, _domain_of, _match_ids, _recipient_key, rows_to_events

logger = logging.getLogger(__name__)

EVENT_TYPES = {
    "Delivery": "sent",
    "TransientFailure": "deferred",
    "Bounce": "bounced",
    "AdminBounce": "bounced",
    "OOB": "bounced",
    "Expiration": "expired",
    "Feedback": "complaint",
}
NO_EVENT_TYPES = ("Reception", "Rejection", "Delay")
# KumoMTA's predefined bounce classes (PreDefinedBounceClass in its bounce-classify crate) and
# the bounce reason each one means. Classes not listed (Uncategorized, TransientFailure,
# MessageExpired, AutoReply, user-defined ones) leave the reason to the response text and codes.
BOUNCE_CLASSES = {
    "InvalidRecipient": "user_unknown",
    "BadDomain": "invalid_domain",
    "DNSFailure": "invalid_domain",
    "InactiveMailbox": "account_disabled",
    "QuotaIssues": "mailbox_full",
    "NoAnswerFromHost": "unreachable",
    "BadConnection": "unreachable",
    "RoutingErrors": "unreachable",
    "PolicyRelated": "refused",
    "SpamBlock": "refused",
    "SpamContent": "refused",
    "SpamRelated": "refused",
    "ProhibitedAttachment": "refused",
    "VirusRelated": "refused",
    "AuthenticationFailed": "refused",
    "ContentRelated": "refused",
    "RelayDenied": "refused",
    "RelayingIssues": "refused",
    "InvalidSender": "refused",
    "ProtocolErrors": "other",
    "BadConfiguration": "other",
}
MESSAGE_ID_HEADER_RE = re.compile(r"^message-id:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
ID_NAMES = ("delivery_id", "recipient_id", "link_id")
# A JSON escape of a UTF-16 surrogate; json.loads joins valid pairs and keeps lone ones.
LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def decompress_segment(path: str | Path) -> bytes:
    """Return the decompressed bytes of a KumoMTA log segment, reading every zstd frame."""
    import zstandard

    with open(path, "rb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        return reader.read()


class KumoMtaParser:
    """Stateless parser of one KumoMTA log source.

    cfg provides message_id_pattern (on the Message-ID in the record's headers),
    envelope_sender_pattern (on sender) and meta_ids (pairs of an id name and the meta key
    holding it, such as (("delivery_id", "campaign"), ("recipient_id", "subscriber"))).
    Optional attribute: bounce_rules.
    """

    def __init__(self, cfg: Any) -> None:
        self._message_id_re = _compile_id_pattern(cfg.message_id_pattern, "message_id_pattern")
        self._sender_re = _compile_id_pattern(cfg.envelope_sender_pattern,
                                              "envelope_sender_pattern")
        self._meta_ids = dict(getattr(cfg, "meta_ids", None) or ())
        unknown = set(self._meta_ids) - set(ID_NAMES)
        if unknown or (self._meta_ids and "delivery_id" not in self._meta_ids):
            raise ValueError(f"meta_ids must name delivery_id and optionally recipient_id and "
                             f"link_id, got {sorted(self._meta_ids)}")
        self._bounce_rules = compile_extra_rules(getattr(cfg, "bounce_rules", None))

    def snapshot(self) -> None:
        return None

    def restore(self, state: dict[str, Any]) -> None:
        del state

    def parse(self, batch: LineBatch, ctx: SourceContext) -> ParseResult:
        """Turn a batch of JSON record lines into events and rejects."""
        counters = {"lines": len(batch), "rejected": 0, "ignored": 0, "received": 0}
        rows: list[dict[str, Any]] = []
        rejected: list[tuple[int, str]] = []

        for line_index, line in enumerate(batch.lines.to_pylist()):
            try:
                record = json.loads(line or "")
            except (ValueError, RecursionError):
                rejected.append((line_index, "invalid JSON: expected one log record per line"))
                continue
            if LONE_SURROGATE_ESCAPE.search(line):
                record = _without_lone_surrogates(record)
            outcome = self._read_record(record, counters)
            if isinstance(outcome, str):
                rejected.append((line_index, outcome))
                continue
            for index, row in enumerate(outcome):
                row.update(line=line_index, index=index)
                rows.append(row)

        counters["rejected"] = len(rejected)
        counters["events"] = len(rows)
        counters["ignored"] = (len(batch) - len({row["line"] for row in rows}) - len(rejected)
                               - counters["received"])
        return ParseResult(events=self._build_table(rows, batch, ctx),
                           rejects=_rejects(rejected, batch, ctx), counters=counters)

    def _read_record(self, record: Any, counters: dict[str, int]) -> list[dict[str, Any]] | str:
        """Return the record's event rows (one per recipient), or a reject reason."""
        if not isinstance(record, dict):
            return "not a log record: expected a JSON object"
        record_type = record.get("type")
        if record_type == "Reception":
            counters["received"] += 1
            return []
        if record_type in NO_EVENT_TYPES:
            return []
        event_type = EVENT_TYPES.get(record_type) if isinstance(record_type, str) else None
        if event_type is None:
            return f"unknown record type {str(record_type)[:40]!r}"
        time = _read_time(record.get("timestamp"))
        if time is None:
            return f"invalid timestamp {str(record.get('timestamp'))[:40]!r}"

        if event_type == "complaint":
            recipients, sender, message_id, meta = _feedback_fields(record)
        else:
            recipients = _strings(record.get("recipient"))
            sender = _string(record.get("sender"))
            message_id = _header(record.get("headers"), "message-id")
            meta = _dict(record.get("meta"))
        ids, join_key = self._ids(message_id, sender, meta)

        response = _dict(record.get("response"))
        code = response.get("code")
        base = {
            "event_time": time, "event_type": event_type, "ids": ids, "join_key": join_key,
            "queue_id": _string(record.get("id")), "message_id": message_id,
            "smtp_code": code if isinstance(code, int) and 100 <= code <= 599 else None,
            "dsn": _enhanced_code(response.get("enhanced_code")),
            "diagnostic": _string(response.get("content")),
            "relay": _relay(record.get("peer_address")),
            "classification": _string(record.get("bounce_classification")),
        }
        targets: list[str | None] = list(recipients) or [None]
        return [dict(base, recipient_domain=_domain_of(recipient),
                     recipient_key=_recipient_key(recipient))
                for recipient in targets]

    def _ids(self, message_id: str | None, sender: str | None,
             meta: dict[str, Any]) -> tuple[list[str | None] | None, str | None]:
        # Preference: a VERP envelope sender, the Message-ID, then the mailer's meta.
        ids = _match_ids(self._sender_re, sender)
        if ids is not None:
            return ids, "envelope_sender"
        ids = _match_ids(self._message_id_re, message_id)
        if ids is not None:
            return ids, "message_id"
        ids = self._meta_id_values(meta)
        return (ids, "meta") if ids is not None else (None, None)

    def _meta_id_values(self, meta: dict[str, Any]) -> list[str | None] | None:
        if not self._meta_ids:
            return None
        values: list[str | None] = []
        for name in ID_NAMES:
            value = meta.get(self._meta_ids[name]) if name in self._meta_ids else None
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            values.append(value if isinstance(value, str) and value else None)
        # Meta values are set by the client that injected the message, so an id that could not
        # be a real one is not used, and the event stays unattributed.
        if values[0] is None or any(v is not None and not VALID_ID.match(v) for v in values):
            return None
        return values

    def _classify(self, row: dict[str, Any]) -> tuple[str | None, str | None]:
        if row["event_type"] == "complaint":
            return None, None
        bounce_type, reason = classify(row["event_type"], row["dsn"], row["smtp_code"],
                                       row["diagnostic"], self._bounce_rules)
        class_reason = BOUNCE_CLASSES.get(row["classification"] or "")
        if bounce_type is not None and class_reason is not None:
            reason = class_reason
        return bounce_type, reason

    def _build_table(self, rows: list[dict[str, Any]], batch: LineBatch, ctx: SourceContext):
        return rows_to_events(rows, [self._classify(row) for row in rows], batch, ctx)


def _feedback_fields(record: dict[str, Any]) -> tuple[list[str], str | None, str | None,
                                                      dict[str, Any]]:
    """Read the complained-about recipient, sender, Message-ID and meta of a Feedback record.

    The record's own sender and recipient are those of the ARF report message. The original
    message's are in feedback_report, and supplemental_trace contains KumoMTA's trace header
    when the original message carried one.
    """
    report = _dict(record.get("feedback_report"))
    trace = _dict(report.get("supplemental_trace"))

    recipients = _strings(trace.get("recipient")) or [
        address.strip("<>") for address in _strings(report.get("original_rcpto_to"))]
    sender = _string(report.get("original_mail_from"))
    original = _string(report.get("original_message"))
    match = MESSAGE_ID_HEADER_RE.search(original) if original else None
    meta = _dict(record.get("meta"))
    return recipients, sender.strip("<>") if sender else None, match.group(1) if match else None, \
        {**trace, **meta}


def _read_time(value: Any) -> datetime | None:
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            # Some KumoMTA versions and log hooks write RFC 3339 instead of Unix seconds.
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed.astimezone(UTC) if parsed.tzinfo else None
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _enhanced_code(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    parts = [value.get("class"), value.get("subject"), value.get("detail")]
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 999 for p in parts):
        return None
    return ".".join(str(p) for p in parts) if parts[0] in (2, 4, 5) else None


def _relay(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    name = _string(value.get("name"))
    addr = _string(value.get("addr"))
    if name and addr:
        return f"{name.rstrip('.')}[{addr}]"
    return name or addr


def _header(headers: Any, name: str) -> str | None:
    if not isinstance(headers, dict):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return _string(value)
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return []


def _rejects(rejected: list[tuple[int, str]], batch: LineBatch, ctx: SourceContext):
    index = np.asarray([line for line, _ in rejected], dtype=np.int64)
    return build_rejects(ctx, batch.offsets[index], batch.lines.take(index),
                         batch.line_bytes[index], [reason for _, reason in rejected])


def _without_lone_surrogates(value: Any) -> Any:
    """Replace the lone surrogates that JSON escapes can encode ("\\ud800") with "?".

    A remote server chooses the text of its replies; Arrow stores only valid UTF-8, in which a
    lone surrogate has no encoding.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    return value
