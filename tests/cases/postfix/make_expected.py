"""Count the final outcome of each delivery in a Postfix ground-truth file.

Run once by hand when the corpus changes; the tests read only the JSON it writes:

    python make_expected.py ground_truth_runA.jsonl > expected_runA.json

The ground truth has one row per (message, recipient) with expected_final in sent, bounced,
expired, rejected or deleted. Deleted messages (postsuper -d) leave no outcome line in the log,
so they are not counted.
"""

import json
import sys
from collections import Counter

OUTCOMES = ("sent", "bounced", "expired", "rejected")


def main(path: str) -> None:
    counts: dict[str, Counter] = {}
    with open(path, encoding="utf-8") as rows:
        for line in rows:
            row = json.loads(line)
            if row["expected_final"] in OUTCOMES:
                counts.setdefault(row["delivery_id"], Counter())[row["expected_final"]] += 1

    expected = {
        "produced_by": "tests/cases/postfix/make_expected.py ground_truth_runA.jsonl (run once)",
        "source": "corpus run A ground truth: one row per message and recipient, expected_final",
        "deliveries": {
            delivery: {outcome: counter.get(outcome, 0) for outcome in OUTCOMES}
            for delivery, counter in sorted(counts.items())
        },
    }
    json.dump(expected, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
