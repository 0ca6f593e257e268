"""Compute the expected per-delivery counts of the bundled logs from the corpus ground truth.

Run once by a developer who has the corpus (the ground truth was written by the corpus
generator, independently of clicktrail); the tests read only the JSON this writes:

    python tests/cases/tools/expected_from_corpus.py CORPUS_DIR > tests/cases/expected_demo_logs.json
"""

import collections
import json
import sys
from pathlib import Path

POSTS = {"rfc8058_one_click", "rfc8058_one_click_multipart", "rfc8058_one_click_query",
         "form_post"}


def apache_counts(ground_truth: Path, log_name: str) -> dict:
    counts: dict = collections.defaultdict(collections.Counter)
    for line in ground_truth.open():
        row = json.loads(line)
        logged = (row.get("logged") or {}).get(log_name)
        if not logged or not row["attributable"]:
            continue
        if row["kind"] not in ("open", "click", "unsubscribe", "mirror"):
            continue
        delivery = counts[row["delivery_id"]]
        delivery[row["kind"]] += 1
        if row["kind"] == "unsubscribe" and row["subkind"] in POSTS:
            delivery["unsubscribe_post"] += 1
    return {d: dict(sorted(c.items())) for d, c in sorted(counts.items())}


def apache_unique(ground_truth: Path, log_name: str) -> dict:
    openers: dict = collections.defaultdict(set)
    clickers: dict = collections.defaultdict(set)
    unsubscribers: dict = collections.defaultdict(set)
    for line in ground_truth.open():
        row = json.loads(line)
        logged = (row.get("logged") or {}).get(log_name)
        if not logged or not row["attributable"]:
            continue
        if row["kind"] == "open":
            openers[row["delivery_id"]].add(row["recipient_id"])
        if row["kind"] == "click":
            clickers[row["delivery_id"]].add(row["recipient_id"])
        if row["kind"] == "unsubscribe" and row["subkind"] in POSTS:
            unsubscribers[row["delivery_id"]].add(row["recipient_id"])
    return {d: {"unique_openers": len(openers[d]), "unique_clickers": len(clickers[d]),
                "unsubscribers": len(unsubscribers[d]),
                "openers_or_clickers": len(openers[d] | clickers[d])}
            for d in sorted(set(openers) | set(clickers))}


# The class clicktrail should give each request, from the ground truth's own labels: ua_class
# names the client the generator imitated, and `machine` marks machine traffic.
PROXY_CLIENTS = {"google_proxy", "yahoo_proxy"}
PREFETCH_CLIENTS = {"apple_mpp"}
NO_USER_AGENT = {"ua_absent", "ua_empty", "ua_dash"}
HUMAN_CLASSES = {"human", "proxy_open", "unknown"}


def expected_class(row: dict) -> str:
    if row["ua_class"] in PROXY_CLIENTS:
        return "proxy_open"
    if row["ua_class"] in PREFETCH_CLIENTS:
        return "machine_prefetch"
    if row["machine"]:
        return "scanner_click" if row["kind"] == "click" else "machine_prefetch"
    if row["ua_class"] in NO_USER_AGENT:
        return "unknown"
    return "human"


def apache_classes(ground_truth: Path, log_name: str) -> dict:
    """Per delivery: hits per (kind, class), and the human-only engagement figures.

    Human-only figures keep the classes in HUMAN_CLASSES; an image proxy's hits count as one
    open per recipient.
    """
    rows = []
    for line in ground_truth.open():
        row = json.loads(line)
        logged = (row.get("logged") or {}).get(log_name)
        if logged and row["attributable"] and row["kind"] in ("open", "click"):
            rows.append((row["delivery_id"], row["recipient_id"], row["kind"], expected_class(row)))

    result: dict = {}
    for delivery in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == delivery]
        human = [r for r in mine if r[3] in HUMAN_CLASSES]
        result[delivery] = {
            "classes": dict(sorted(collections.Counter(f"{r[2]}/{r[3]}" for r in mine).items())),
            "human_opens": (sum(1 for r in human if r[2] == "open" and r[3] != "proxy_open")
                            + len({r[1] for r in human if r[2] == "open" and r[3] == "proxy_open"})),
            "human_unique_opens": len({r[1] for r in human if r[2] == "open"}),
            "human_opens_including_clicks": len({r[1] for r in human}),
            "human_clicks": sum(1 for r in human if r[2] == "click"),
            "human_unique_clickers": len({r[1] for r in human if r[2] == "click"}),
        }
    return result


def postfix_counts(ground_truth: Path) -> dict:
    counts: dict = collections.defaultdict(collections.Counter)
    for line in ground_truth.open():
        row = json.loads(line)
        counts[row["delivery_id"]][row["expected_final"]] += 1
    return {d: dict(sorted(c.items())) for d, c in sorted(counts.items())}


def main() -> None:
    corpus = Path(sys.argv[1])
    apache = corpus / "apache" / "ground_truth.jsonl"
    result = {
        "produced_by": "tests/cases/tools/expected_from_corpus.py from the corpus ground truth",
        "apache_combined": apache_counts(apache, "combined"),
        "apache_rich": apache_counts(apache, "rich"),
        "apache_unique_combined": apache_unique(apache, "combined"),
        "apache_unique_rich": apache_unique(apache, "rich"),
        "apache_classes_rich": apache_classes(apache, "rich"),
        "postfix_runA": postfix_counts(corpus / "postfix" / "ground_truth_runA.jsonl"),
    }
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
