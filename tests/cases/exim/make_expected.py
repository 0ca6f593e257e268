"""Derive the expected per-recipient outcomes of an Exim fixture run from the sink journal.

    python make_expected.py sink-journal-plain.jsonl > expected-plain.json

Every RCPT reply of the sink becomes one outcome, in order: 250 is sent, 4xx deferred, 5xx
bounced. A recipient whose last reply is a 4xx was given up by Exim's retry rule, so it ends
with one more outcome, expired, with the reason of that last reply. The (bounce_type,
bounce_reason) of each reply is read from the reply text by the table below, written by hand
from the sink's rules. Replies to bounce messages (recipients bounce-*) are notifications, not
outcomes. gus@dead.example never reached the sink (its port is closed), so it is listed with
expected_unreachable and the test checks its outcomes by rule instead of by count.
"""

import json
import sys

REPLY_OUTCOMES = {
    "250 2.1.5 Ok": ("sent", None, None),
    ": user unknown": ("bounced", "hard", "user_unknown"),
    ": mailbox full": ("deferred", "soft", "mailbox_full"),
    ": rejected for policy reasons": ("bounced", "hard", "refused"),
    ": account disabled": ("bounced", "hard", "account_disabled"),
    ": greylisted, try again later": ("deferred", "ignored", "refused"),
}


def outcome_of(reply: str) -> list:
    for ending, outcome in REPLY_OUTCOMES.items():
        if reply.endswith(ending):
            return list(outcome)
    raise ValueError(f"no outcome for sink reply {reply!r}")


def main(journal_path: str) -> None:
    outcomes: dict[str, list] = {}
    for line in open(journal_path):
        record = json.loads(line)
        if record["event"] != "rcpt" or record["rcpt"].startswith("bounce-"):
            continue
        outcomes.setdefault(record["rcpt"], []).append(outcome_of(record["reply"]))
    for steps in outcomes.values():
        if steps[-1][0] == "deferred":
            steps.append(["expired", "soft", steps[-1][2]])
    result = {"recipients": outcomes,
              "expected_unreachable": {"gus@dead.example": ["expired", "soft", "unreachable"]}}
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main(sys.argv[1])
