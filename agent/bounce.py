"""Classify MTA delivery failures into a bounce type and a bounce reason.

bounce_type is hard (permanent), soft (transient) or ignored (an expected deferral such as
greylisting, not worth counting as a bounce). bounce_reason is one of schema.BOUNCE_REASONS.

The decision reads the diagnostic text first, then the enhanced status code (RFC 3463), then the
SMTP reply code (RFC 5321), because providers reuse generic codes: 5.7.1 stands for a full
mailbox, a policy block or spam at different providers, while the text usually says which.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from .schema import BOUNCE_REASONS, BOUNCE_TYPES

# Diagnostic text patterns, checked in order; the first match gives the reason. A rule with a
# bounce type forces it; None takes the type from the status and the codes.
# permanent_only rules apply only to a 5xx reply: some servers reply "450 4.1.1 user unknown"
# while their address verification is down, so a transient "user unknown" proves nothing.
TEXT_RULES: tuple[tuple[str, str, str | None, bool], ...] = (
    # (pattern, bounce_reason, forced bounce_type, permanent_only)
    (r"greylist|graylist|grey-listed|gray-listed", "refused", "ignored", False),
    (r"mailbox (?:is )?full|over ?quota|quota (?:exceeded|full)|exceeded (?:storage|quota)"
     r"|insufficient (?:system )?storage|mailbox size limit|out of storage", "mailbox_full", None,
     False),
    (r"message (?:size )?(?:is )?too (?:large|big)|message size exceeds|size limit exceeded"
     r"|message length exceeds|exceeds (?:the )?(?:maximum )?(?:message )?size",
     "message_too_large", None, False),
    (r"account (?:is |has been )?(?:disabled|inactive|suspended|locked|deactivated|expired)"
     r"|mailbox (?:is |has been )?(?:disabled|inactive|suspended|locked)"
     r"|(?:user|recipient) (?:is |has been )?(?:disabled|inactive|suspended)", "account_disabled",
     None, False),
    (r"user unknown|unknown user|no such (?:user|mailbox|recipient|address)"
     r"|(?:user|recipient|mailbox|address) (?:does not exist|doesn't exist|not found|unknown)"
     r"|invalid (?:recipient|mailbox)|unrouteable address|not a valid mailbox", "user_unknown",
     None, True),
    (r"host or domain name not found|domain (?:not found|does not exist|doesn't exist)"
     r"|name service error|unrouteable domain|null mx|no mx (?:record|host)", "invalid_domain",
     None, False),
    (r"block ?list|black ?list|blocked|spamhaus|spamcop|barracuda|listed (?:at|on|in|by)"
     r"|reputation|spam|dmarc|\bspf\b|dkim|virus|malware|attachment|policy|content rejected"
     r"|relay (?:access )?denied|relaying denied|not permitted|access denied"
     r"|rate limit|rate-limit|too many (?:connections|messages|recipients)|throttl",
     "refused", None, False),
    (r"connection refused|connection timed out|timed out|no route to host|network is unreachable"
     r"|lost connection|connection reset|temporarily suspended|no answer", "unreachable", None,
     False),
)

# RFC 3463 enhanced status codes: "subject.detail" without the class digit.
ENHANCED_RULES: dict[str, str] = {
    "1.1": "user_unknown",
    "1.2": "invalid_domain",
    "1.3": "other",
    "1.10": "invalid_domain",  # RFC 7505 null MX
    "2.1": "account_disabled",
    "2.2": "mailbox_full",
    "2.3": "message_too_large",
    "3.4": "message_too_large",
}
# Whole subjects: X.4.x is routing and network trouble, X.7.x security or policy.
ENHANCED_SUBJECT_RULES: dict[str, str] = {"4": "unreachable", "7": "refused"}

# RFC 5321 reply codes that still give a reason when the text and the enhanced code give none.
SMTP_CODE_RULES: dict[int, str] = {
    421: "unreachable",  # service not available, closing channel
    552: "mailbox_full",  # exceeded storage allocation
    554: "refused",  # transaction failed, in practice mostly policy
}

# Addresses in a diagnostic ("<blocked.anna@example.com>: user unknown") are stripped before the
# text rules run, so that a local part never matches a rule.
ADDRESS_RE = re.compile(r"<[^<>]*>")
DSN_RE = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})$")

_COMPILED_TEXT_RULES = tuple(
    (re.compile(pattern, re.IGNORECASE), reason, forced, permanent_only)
    for pattern, reason, forced, permanent_only in TEXT_RULES
)

ExtraRule = tuple[str | re.Pattern[str], str, str]


CompiledRule = tuple[re.Pattern[str], str, str]


def compile_extra_rules(extra_rules: Iterable[ExtraRule] | None) -> list[CompiledRule]:
    """Compile and check operator rules given as (regex, bounce_type, bounce_reason).

    Raises ValueError naming the rule when its type, reason or regex is invalid, so that a config
    check can report it before any log is read.
    """
    compiled = []
    for position, (pattern, bounce_type, bounce_reason) in enumerate(extra_rules or ()):
        if bounce_type not in BOUNCE_TYPES:
            raise ValueError(
                f"bounce rule {position}: bounce_type must be one of {BOUNCE_TYPES}, "
                f"got {bounce_type!r}"
            )
        if bounce_reason not in BOUNCE_REASONS:
            raise ValueError(
                f"bounce rule {position}: bounce_reason must be one of {BOUNCE_REASONS}, "
                f"got {bounce_reason!r}"
            )
        try:
            if isinstance(pattern, re.Pattern):
                regex = pattern
            else:
                regex = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"bounce rule {position}: invalid regex {pattern!r}: {exc}") from exc
        compiled.append((regex, bounce_type, bounce_reason))
    return compiled


def classify(status: str, dsn: str | None, smtp_code: int | None, text: str | None,
             extra_rules: Sequence[ExtraRule] | None = None) -> tuple[str | None, str | None]:
    """Return (bounce_type, bounce_reason) for one delivery outcome.

    status is the outcome as the parser names it (sent, deferred, bounced, expired, rejected).
    A sent message has neither, so the result is (None, None). extra_rules are operator rules
    (regex on the diagnostic text, bounce_type, bounce_reason), checked before the built-in ones.
    """
    if status == "sent":
        return None, None

    permanent = _is_permanent(status, dsn, smtp_code)
    default_type = _default_type(status, dsn, smtp_code)
    stripped = ADDRESS_RE.sub("", text) if text else ""

    for regex, bounce_type, bounce_reason in compile_extra_rules(extra_rules):
        if stripped and regex.search(stripped):
            return bounce_type, bounce_reason

    reason, forced_type = _reason_from_text(stripped, permanent)
    if reason is None:
        reason = _reason_from_dsn(dsn, permanent)
    if reason is None and smtp_code is not None:
        reason = SMTP_CODE_RULES.get(smtp_code)
    if reason is None:
        reason = "other"

    # Only a deferral can be ignored: a message that bounced or expired did fail.
    if forced_type == "ignored" and status != "deferred":
        forced_type = None
    return forced_type or default_type, reason


def _reason_from_text(text: str, permanent: bool) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    for regex, reason, forced_type, permanent_only in _COMPILED_TEXT_RULES:
        if permanent_only and not permanent:
            continue
        if regex.search(text):
            return reason, forced_type
    return None, None


def _reason_from_dsn(dsn: str | None, permanent: bool) -> str | None:
    match = DSN_RE.match(dsn) if dsn else None
    if match is None:
        return None

    detail = f"{int(match.group(2))}.{int(match.group(3))}"
    reason = ENHANCED_RULES.get(detail)
    # A transient X.1.1 is the "verification down" case: not proof of a bad mailbox.
    if reason == "user_unknown" and not permanent:
        return "other"
    if reason is not None:
        return reason
    return ENHANCED_SUBJECT_RULES.get(str(int(match.group(2))))


def _is_permanent(status: str, dsn: str | None, smtp_code: int | None) -> bool:
    """Tell whether the remote reply was permanent (5xx), from the best evidence available."""
    if smtp_code is not None:
        return 500 <= smtp_code < 600
    if dsn:
        return dsn.startswith("5")
    return status == "bounced"


def _default_type(status: str, dsn: str | None, smtp_code: int | None) -> str:
    # Postfix decides bounced versus deferred itself, so its status wins over the codes.
    if status == "bounced":
        return "hard"
    if status in ("deferred", "expired"):
        return "soft"
    return "hard" if _is_permanent(status, dsn, smtp_code) else "soft"


# Masks for normalise_diagnostic, applied in order.
_ADDRESS_MASK = re.compile(r"<?[^\s<>@\"']+@[^\s<>\"',;)]+>?")
_IP_MASK = re.compile(r"\[?\b(?:\d{1,3}\.){3}\d{1,3}\b\]?|\[?\b[0-9a-fA-F:]*:[0-9a-fA-F:]+\b\]?")
_CODE = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b|\b[245]\d\d\b")
_ID_MASK = re.compile(r"\b(?=[0-9A-Za-z_-]*\d)(?=[0-9A-Za-z_-]*[A-Za-z])[0-9A-Za-z_-]{6,}\b")
_NUMBER_MASK = re.compile(r"\d+")
MAX_DIAGNOSTIC_GROUP_CHARS = 300


def normalise_diagnostic(text: str | None) -> str | None:
    """Mask what differs between two reports of one cause, so that they group as one.

    Addresses become <*@*>, IP addresses *, ids and tokens with digits (queue ids, session
    ids) *, other numbers #. Reply codes (550) and enhanced status codes (5.1.1) stay, since
    they tell causes apart.
    """
    if not text:
        return None
    masked = _ADDRESS_MASK.sub("<*@*>", text)
    masked = _IP_MASK.sub("*", masked)

    codes: list[str] = []

    def keep(match: re.Match[str]) -> str:
        codes.append(match.group(0))
        return f"\x00{len(codes) - 1}\x00"

    masked = _CODE.sub(keep, masked)
    masked = _ID_MASK.sub("*", masked)
    masked = _NUMBER_MASK.sub("#", masked)
    masked = re.sub("\x00#\x00", lambda _: codes.pop(0), masked)
    masked = " ".join(masked.split())
    return masked[:MAX_DIAGNOSTIC_GROUP_CHARS]
