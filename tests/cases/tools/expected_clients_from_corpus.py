"""Compute the expected opens and clicks per mail client of the bundled logs from the corpus.

The corpus generator labels each request's user agent with a class (ua_class). This script maps
each class to the mail client that the reports name, by hand, so the tests check the reporter
against the generator's labels and not against itself. Run once by a developer who has the
corpus; the tests read only the JSON this writes:

    python tests/cases/tools/expected_clients_from_corpus.py CORPUS_DIR \
        > tests/cases/expected_demo_clients.json
"""

import collections
import json
import sys
from pathlib import Path

# Classes whose user agents all name one mail client. The classes that are neither here nor in
# expected_client() are "unknown": absent, empty and malformed user agents, and agents that
# name no browser (such as the corpus's one-click unsubscribe tester).
CLIENT_OF_CLASS = {
    "iphone_mail": "Apple Mail",
    "mac_mail": "Apple Mail",
    "apple_mpp": "Apple Mail Privacy Protection",
    "google_proxy": "Gmail image proxy",
    "yahoo_proxy": "Yahoo Mail proxy",
    "iphone_safari": "Webmail or browser",
    "crawler": "Bot or script",
    "ua_curl_default": "Bot or script",
    # The user agent names Android's browser, whatever the app is.
    "ua_nonascii": "Webmail or browser",
}


def expected_client(ua_class: str | None, user_agent: str | None) -> str:
    if ua_class in CLIENT_OF_CLASS:
        return CLIENT_OF_CLASS[ua_class]
    agent = user_agent or ""
    if ua_class == "outlook":
        # The new Outlook for Windows sends Microsoft Edge's user agent.
        return "Webmail or browser" if "Edg/" in agent else "Outlook"
    if ua_class == "desktop":
        return "Thunderbird" if "Thunderbird/" in agent else "Webmail or browser"
    if ua_class == "android":
        return "Android app (WebView)" if "; wv)" in agent else "Webmail or browser"
    if ua_class == "scanner":
        # A scanner that poses as Internet Explorer sends Internet Explorer's user agent.
        return "Webmail or browser" if "MSIE" in agent else "Bot or script"
    return "unknown"


def client_counts(ground_truth: Path, log_name: str) -> dict:
    hits: dict = collections.defaultdict(collections.Counter)
    recipients: dict = collections.defaultdict(lambda: collections.defaultdict(set))
    for line in ground_truth.open():
        row = json.loads(line)
        logged = (row.get("logged") or {}).get(log_name)
        if not logged or not row["attributable"] or row["kind"] not in ("open", "click"):
            continue
        key = (row["delivery_id"], expected_client(row["ua_class"], row["user_agent"]))
        hits[key][row["kind"]] += 1
        recipients[key][row["kind"]].add(row["recipient_id"])

    result: dict = collections.defaultdict(dict)
    for (delivery, client), counter in sorted(hits.items()):
        result[delivery][client] = {
            "opens": counter["open"], "openers": len(recipients[(delivery, client)]["open"]),
            "clicks": counter["click"], "clickers": len(recipients[(delivery, client)]["click"]),
        }
    return dict(result)


def main() -> None:
    corpus = Path(sys.argv[1])
    result = {
        "produced_by": "tests/cases/tools/expected_clients_from_corpus.py from the corpus "
                       "ground truth",
        "apache_rich": client_counts(corpus / "apache" / "ground_truth.jsonl", "rich"),
    }
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
