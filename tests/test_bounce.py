"""Tests of the bounce classifier, on diagnostics taken from real Postfix logs (cases/postfix)
and on a few typical provider replies."""

from __future__ import annotations

import pytest
from clicktrail.agent.bounce import classify, compile_extra_rules, normalise_diagnostic
from clicktrail.agent.schema import BOUNCE_REASONS, BOUNCE_TYPES

CASES = [
    # (status, dsn, smtp_code, diagnostic, bounce_type, bounce_reason)
    pytest.param("bounced", "5.1.1", 550,
                 "host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <unknown.anna@inbox-c.example>: "
                 "user unknown (in reply to RCPT TO command)",
                 "hard", "user_unknown", id="corpus-550-user-unknown"),
    pytest.param("bounced", "5.1.1", None, 'unknown user: "nosuchuser.bb08d0"',
                 "hard", "user_unknown", id="corpus-local-unknown-user"),
    pytest.param("bounced", "5.2.1", 550,
                 "host 127.0.0.1[127.0.0.1] said: 550 5.2.1 <disabled.kim@inbox-b.example>: "
                 "account disabled (in reply to RCPT TO command)",
                 "hard", "account_disabled", id="corpus-account-disabled"),
    pytest.param("bounced", "5.7.1", 554,
                 "host 127.0.0.1[127.0.0.1] said: 554 5.7.1 <blocked.ben@inbox-c.example>: "
                 "rejected for policy reasons (in reply to RCPT TO command)",
                 "hard", "refused", id="corpus-policy"),
    pytest.param("bounced", "5.1.2", None, "domain retired (test setup)",
                 "hard", "invalid_domain", id="corpus-error-transport"),
    pytest.param("deferred", "4.2.2", 452,
                 "host 127.0.0.1[127.0.0.1] said: 452 4.2.2 <full.ana@inbox-a.example>: "
                 "mailbox full (in reply to RCPT TO command)",
                 "soft", "mailbox_full", id="corpus-mailbox-full"),
    pytest.param("deferred", "4.7.0", 421,
                 "host 127.0.0.1[127.0.0.1] said: 421 4.7.0 try again later "
                 "(in reply to RCPT TO command)",
                 "soft", "refused", id="corpus-try-again-later"),
    pytest.param("deferred", "4.7.1", 451,
                 "host 127.0.0.1[127.0.0.1] said: 451 4.7.1 <greylist.joe@inbox-c.example>: "
                 "greylisted, try again later (in reply to RCPT TO command)",
                 "ignored", "refused", id="corpus-greylisted"),
    pytest.param("deferred", "4.4.1", None,
                 "connect to 127.0.0.1[127.0.0.1]:2526: Connection refused",
                 "soft", "unreachable", id="corpus-connection-refused"),
    pytest.param("deferred", "4.4.1", None,
                 "delivery temporarily suspended: connect to 127.0.0.1[127.0.0.1]:2526: "
                 "Connection refused",
                 "soft", "unreachable", id="corpus-suspended"),
    pytest.param("expired", "4.4.1", None,
                 "connect to 127.0.0.1[127.0.0.1]:2526: Connection refused",
                 "soft", "unreachable", id="corpus-expired-dead-mx"),
    pytest.param("expired", "4.7.1", 451, "451 4.7.1 greylisted, try again later",
                 "soft", "refused", id="expired-after-greylisting-not-ignored"),
    pytest.param("rejected", "5.1.2", 550,
                 "550 5.1.2 <x@retired.example>: Recipient address rejected: domain retired",
                 "hard", "invalid_domain", id="corpus-reject-domain"),
    pytest.param("rejected", "5.1.1", 550,
                 "550 5.1.1 <nosuchuser2.bb08d0@localhost>: Recipient address rejected: "
                 "User unknown in local recipient table",
                 "hard", "user_unknown", id="corpus-reject-local-user"),
    pytest.param("rejected", "4.7.1", 450, "450 4.7.1 Client host rejected: try again later",
                 "soft", "refused", id="reject-transient"),
    # Transient "user unknown" is not trusted: verification may be down at the remote end.
    pytest.param("deferred", "4.1.1", 450, "450 4.1.1 <a@b.example>: Recipient address "
                 "rejected: User unknown in virtual mailbox table", "soft", "other",
                 id="transient-user-unknown"),
    pytest.param("deferred", "4.1.1", None, None, "soft", "other", id="transient-x11-no-text"),
    # Provider texts win over their generic codes.
    pytest.param("bounced", "5.7.1", 550, "550 5.7.1 Mailbox full, quota exceeded",
                 "hard", "mailbox_full", id="quota-under-571"),
    pytest.param("bounced", "5.7.1", 550, "550 5.7.1 Unauthenticated email from example.com "
                 "is not accepted due to domain's DMARC policy", "hard", "refused", id="dmarc"),
    pytest.param("bounced", "5.3.4", 552, "552 5.3.4 Message size exceeds fixed limit",
                 "hard", "message_too_large", id="too-large"),
    pytest.param("bounced", "5.4.4", None, "Host or domain name not found. Name service error "
                 "for name=nope.example type=MX: Host not found", "hard", "invalid_domain",
                 id="dns-not-found"),
    pytest.param("bounced", "5.0.0", 550, "550 Requested action not taken", "hard", "other",
                 id="generic-550"),
    pytest.param("bounced", "5.0.0", 554, "554 Transaction failed", "hard", "refused",
                 id="smtp-code-554"),
    pytest.param("bounced", "5.2.3", None, None, "hard", "message_too_large", id="dsn-only-523"),
    pytest.param("bounced", "5.4.7", None, None, "hard", "unreachable", id="dsn-subject-4"),
    pytest.param("sent", "2.0.0", 250, "250 2.0.0 Ok: queued as SINK000001", None, None,
                 id="sent-has-none"),
]


@pytest.mark.parametrize(("status", "dsn", "smtp_code", "text", "bounce_type", "bounce_reason"),
                         CASES)
def test_classify(status, dsn, smtp_code, text, bounce_type, bounce_reason):
    assert classify(status, dsn, smtp_code, text) == (bounce_type, bounce_reason)


def test_address_in_text_does_not_match():
    # "blocked" in the local part must not make a mailbox-full reply a policy block.
    text = "452 4.2.2 <blocked.full@inbox-a.example>: over quota"
    assert classify("deferred", "4.2.2", 452, text) == ("soft", "mailbox_full")


def test_extra_rules_checked_first():
    rules = [(r"mailbox full", "hard", "account_disabled")]
    text = "452 4.2.2 <a@b.example>: mailbox full"

    assert classify("deferred", "4.2.2", 452, text, rules) == ("hard", "account_disabled")
    assert classify("deferred", "4.2.2", 452, "452 other text", rules) == ("soft", "mailbox_full")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (("x", "permanent", "other"), "bounce_type must be one of"),
        (("x", "hard", "spam"), "bounce_reason must be one of"),
        (("(", "hard", "other"), "invalid regex"),
    ],
    ids=["bad-type", "bad-reason", "bad-regex"],
)
def test_extra_rule_invalid(rule, message):
    with pytest.raises(ValueError, match=message):
        compile_extra_rules([rule])


def test_results_in_closed_sets():
    for case in CASES:
        bounce_type, bounce_reason = classify(*case.values[:4])
        assert bounce_type is None or bounce_type in BOUNCE_TYPES
        assert bounce_reason is None or bounce_reason in BOUNCE_REASONS


@pytest.mark.parametrize(
    ("diagnostic", "group"),
    [
        ("host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <unknown.x1@inbox-a.example>: user unknown "
         "(in reply to RCPT TO command)",
         "host ** said: 550 5.1.1 <*@*>: user unknown (in reply to RCPT TO command)"),
        ("connect to 127.0.0.1[127.0.0.1]:2526: Connection refused",
         "connect to **:#: Connection refused"),
        ("250 2.0.0 Ok: queued as SINK000313", "250 2.0.0 Ok: queued as *"),
        ("552 5.3.4 message size 1048577 exceeds limit 1048576",
         "552 5.3.4 message size # exceeds limit #"),
        (None, None),
    ],
    ids=["user-unknown", "refused", "queue-id", "sizes", "none"],
)
def test_normalise_diagnostic(diagnostic, group):
    assert normalise_diagnostic(diagnostic) == group
