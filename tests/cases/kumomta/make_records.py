"""Write records.jsonl, KumoMTA log records for the KumoMTA parser tests.

No KumoMTA was available to write real logs, so the records follow the log record format that
KumoMTA documents (docs/reference/log_record.md in the KumoMTA repository): one JSON object
per line, with type, id, sender, recipient, queue, site, size, response {code, enhanced_code,
content, command}, peer_address, timestamp and created in Unix seconds, num_attempts,
bounce_classification, egress_pool, egress_source, feedback_report, meta, headers,
delivery_protocol, reception_protocol and nodeid. The last lines are invalid on purpose.

    python make_records.py > records.jsonl
"""

import json

NODE = "557f3ad4-2c8c-11ee-976e-782d7e12e173"
PEER = {"name": "mx.inbox-a.example.", "addr": "192.0.2.10"}


def response(code, enhanced, content, command="RCPT TO"):
    klass, subject, detail = enhanced if enhanced else (None, None, None)
    return {"code": code,
            "enhanced_code": {"class": klass, "subject": subject, "detail": detail}
            if enhanced else None,
            "content": content, "command": command}


def record(kind, spool_id, sender, recipient, when, reply, classification="Uncategorized",
           headers=None, meta=None, peer=PEER, **extra):
    base = {
        "type": kind, "id": spool_id, "sender": sender, "recipient": recipient,
        "queue": recipient.split("@")[1] if isinstance(recipient, str) else "inbox-c.example",
        "site": "" if kind == "Reception" else f"source1->{(peer or {}).get('name', '')}",
        "size": 1843, "response": reply, "peer_address": peer, "timestamp": when,
        "created": 1796412190, "num_attempts": 0, "bounce_classification": classification,
        "egress_pool": "pool0", "egress_source": "source1", "feedback_report": None,
        "meta": meta or {}, "headers": headers or {}, "delivery_protocol": "ESMTP",
        "reception_protocol": "ESMTP", "nodeid": NODE,
    }
    base.update(extra)
    return base


def message_id(recipient_id):
    return {"Message-ID": f"<c0ffee.{recipient_id}.x1@mailer.example>",
            "Subject": "Winter offers"}


RECORDS = [
    record("Reception", "1d98076abbbc11ed940250ebf67f9301", "bounce-c0ffee-a001@mailer.example",
           "ok.anna@inbox-a.example", 1796412190,
           response(250, None, "", "."), headers=message_id("a001"),
           peer={"name": "mailer.example", "addr": "127.0.0.1"}),
    record("Delivery", "1d98076abbbc11ed940250ebf67f9301", "bounce-c0ffee-a001@mailer.example",
           "ok.anna@inbox-a.example", 1796412191,
           response(250, (2, 0, 0), "OK ids=8a5475ccbbc611eda12250ebf67f93bd", "."),
           headers=message_id("a001")),
    record("Bounce", "1d98076abbbc11ed940250ebf67f9302", "bounce-c0ffee-a002@mailer.example",
           "unknown.bob@inbox-a.example", 1796412192,
           response(550, (5, 1, 1), "<unknown.bob@inbox-a.example>: user unknown"),
           "InvalidRecipient", headers=message_id("a002")),
    record("TransientFailure", "1d98076abbbc11ed940250ebf67f9303",
           "bounce-c0ffee-a003@mailer.example", "full.carl@inbox-b.example", 1796412193,
           response(452, (4, 2, 2), "<full.carl@inbox-b.example>: mailbox full"),
           "QuotaIssues", headers=message_id("a003")),
    record("TransientFailure", "1d98076abbbc11ed940250ebf67f9306",
           "bounce-c0ffee-a006@mailer.example", "greylist.fay@inbox-b.example", 1796412194,
           response(451, (4, 7, 1), "<greylist.fay@inbox-b.example>: greylisted, try again "
                    "later"), headers=message_id("a006")),
    record("Expiration", "1d98076abbbc11ed940250ebf67f9303", "bounce-c0ffee-a003@mailer.example",
           "full.carl@inbox-b.example", 1796757795,
           response(551, (5, 4, 7), "Next delivery time would be at 2026-12-08 19:23:20 UTC "
                    "which exceeds the expiry time 2026-12-08 19:23:10 UTC configured via "
                    "set_scheduling", None),
           headers=message_id("a003"), peer=None),
    record("Bounce", "1d98076abbbc11ed940250ebf67f9304", "bounce-c0ffee-a004@mailer.example",
           "blocked.dora@inbox-b.example", 1796412196,
           response(554, (5, 7, 1), "Service unavailable; Client host [198.51.100.5] blocked "
                    "using zen.spamhaus.org"), "SpamBlock", headers=message_id("a004")),
    record("AdminBounce", "1d98076abbbc11ed940250ebf67f9305", "bounce-c0ffee-a005@mailer.example",
           "disabled.emil@inbox-a.example", 1796412197,
           response(551, (5, 7, 1), "Administrator bounced with: campaign cancelled", None),
           headers=message_id("a005"), peer=None),
    record("OOB", "1d98076abbbc11ed940250ebf67f9308", "bounce-c0ffee-a008@mailer.example",
           "ok.ida@inbox-c.example", 1796413000,
           response(550, (5, 1, 1), "user unknown", None), "InvalidRecipient", peer=None),
    record("Delivery", "1d98076abbbc11ed940250ebf67f9310", "news@mailer.example",
           ["ok.hal@inbox-c.example", "ok.jan@inbox-c.example"], 1796412198,
           response(250, (2, 0, 0), "OK", "."), meta={"campaign": "beef01", "subscriber": "b002"},
           peer={"name": "mx.inbox-c.example.", "addr": "192.0.2.30"}),
    record("Feedback", "1d98076abbbc11ed940250ebf67f9399", "fbl@isp.example",
           "fbl@mailer.example", 1796457600, response(250, None, "", "."), peer=None,
           feedback_report={
               "feedback_type": "abuse", "user_agent": "SomeGenerator/1.0", "version": 1,
               "arrival_date": "2026-12-04T19:23:11Z", "incidents": None,
               "original_envelope_id": None,
               "original_mail_from": "<bounce-c0ffee-a001@mailer.example>",
               "reporting_mta": {"mta_type": "dns", "name": "mail.isp.example"},
               "source_ip": "198.51.100.5", "authentication_results": [],
               "original_rcpto_to": ["<ok.anna@inbox-a.example>"],
               "reported_domain": ["mailer.example"], "reported_uri": [], "extensions": {},
               "original_message": "From: <news@mailer.example>\nTo: <ok.anna@inbox-a.example>\n"
                                   "Subject: Winter offers\n"
                                   "Message-ID: <c0ffee.a001.x1@mailer.example>\n\nHello\n",
               "supplemental_trace": None}),
    record("Rejection", "", "spammer@elsewhere.example", "anyone@mailer.example", 1796412199,
           response(550, (5, 7, 1), "relaying not permitted", "RCPT TO"),
           peer={"name": "elsewhere.example", "addr": "203.0.113.9"}),
    record("Delay", "1d98076abbbc11ed940250ebf67f9303", "bounce-c0ffee-a003@mailer.example",
           "full.carl@inbox-b.example", 1796412200,
           response(451, (4, 4, 5), "KumoMTA internal: queue is suspended", None), peer=None),
]

for item in RECORDS:
    print(json.dumps(item))
print("this is not JSON")
print("[1, 2]")
print(json.dumps(record("Delivery", "x", "a@b.example", "c@d.example", "yesterday",
                        response(250, (2, 0, 0), "OK"))))
print(json.dumps(record("Bogus", "x", "a@b.example", "c@d.example", 1796412199,
                        response(250, (2, 0, 0), "OK"))))
