"""The main job on the bundled real logs: agent once, catalog import, nightly HTML and PDF."""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from clicktrail.agent.cli import main as agent_main
from clicktrail.reporter.cli import main as report_main

from .conftest import CASES, EXAMPLES, copy_logs, demo_config_text, write_config

EXPECTED = json.loads((CASES / "expected_demo_logs.json").read_text())


@pytest.fixture(scope="module")
def demo_reports(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    for name in ("logs", "state", "store", "reports"):
        (workdir / name).mkdir()
    copy_logs("apache/tracking_rich.log*", workdir / "logs")
    copy_logs("postfix/postfix.log*", workdir / "logs")
    config = write_config(workdir, demo_config_text(
        tracking_paths=str(workdir / "logs" / "tracking_rich.log*"),
        mta_paths=str(workdir / "logs" / "postfix.log*")))
    catalog = sorted(str(p) for p in (EXAMPLES / "catalog" / "deliveries").glob("*.json"))

    runner = CliRunner()
    steps = [
        (agent_main, ["once", "--config", str(config)]),
        (report_main, ["import-catalog", "--config", str(config), *catalog]),
        (report_main, ["nightly", "--config", str(config), "--date", "2026-12-04"]),
    ]
    for command, args in steps:
        result = runner.invoke(command, args)
        assert result.exit_code == 0, result.output
    return workdir / "reports" / "2026-12-04"


def pdf_text(path) -> str:
    completed = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True,
                               capture_output=True, text=True)
    return completed.stdout


def figure(text: str, label: str) -> int:
    """Read the count after a label; reports group thousands with a space ("1 140")."""
    match = re.search(rf"^{re.escape(label)}\s+(\d{{1,3}}(?:[ \u202f\u00a0]\d{{3}})*)\b", text, re.M)
    assert match, f"{label!r} not found"
    return int(re.sub(r"\D", "", match.group(1)))


def figure_pair(text: str, label: str) -> tuple[int, int]:
    """Read the "All hits" and "Human" counts after a label of the engagement table."""
    number = r"(\d{1,3}(?:[ \u202f\u00a0]\d{3})*)"
    match = re.search(rf"^{re.escape(label)}\s+{number}\s+{number}\b", text, re.M)
    assert match, f"{label!r} with two counts not found"
    return int(re.sub(r"\D", "", match.group(1))), int(re.sub(r"\D", "", match.group(2)))


@pytest.mark.parametrize("delivery", ["bb08d0", "7d81d5"])
def test_pdf_delivery_figures_match_ground_truth(demo_reports, delivery):
    text = pdf_text(demo_reports / f"delivery-{delivery}.pdf")
    mta = EXPECTED["postfix_runA"][delivery]

    assert figure(text, "Delivered") == mta["sent"]
    assert figure(text, "Hard bounces") == mta["bounced"]
    assert figure(text, "Soft bounces") == mta["expired"]
    assert figure(text, "Rejected") == mta["rejected"]
    assert figure(text, "Processed") == sum(mta.values())


@pytest.mark.parametrize("delivery", ["bb08d0", "7d81d5", "5a4865", "1534f7", "3440b0", "c51a19"])
def test_pdf_engagement_figures_match_ground_truth(demo_reports, delivery):
    text = pdf_text(demo_reports / f"delivery-{delivery}.pdf")
    hits = EXPECTED["apache_rich"][delivery]
    unique = EXPECTED["apache_unique_rich"][delivery]

    human = EXPECTED["apache_classes_rich"][delivery]
    assert figure_pair(text, "Opens") == (hits["open"], human["human_opens"])
    assert figure_pair(text, "Unique opens") == (unique["unique_openers"],
                                                 human["human_unique_opens"])
    assert figure_pair(text, "Opens including clicks") == (unique["openers_or_clickers"],
                                                           human["human_opens_including_clicks"])
    assert figure_pair(text, "Clicks") == (hits["click"], human["human_clicks"])
    assert figure_pair(text, "Unique clickers") == (unique["unique_clickers"],
                                                    human["human_unique_clickers"])
    assert figure(text, "Unsubscriptions") == unique["unsubscribers"]
    assert figure(text, "Mirror page views") == hits.get("mirror", 0)


def test_classified_store_matches_ground_truth(demo_reports):
    """Every open and click of the demo logs gets the class the corpus ground truth implies."""
    store = demo_reports.parent.parent / "store"
    table = pq.read_table(store / "classified", columns=["delivery_id", "event_type", "class"])
    counts: Counter = Counter()
    for row in table.to_pylist():
        counts[(row["delivery_id"], f"{row['event_type']}/{row['class']}")] += 1

    expected = {(delivery, key): hits
                for delivery, figures in EXPECTED["apache_classes_rich"].items()
                for key, hits in figures["classes"].items()}
    assert dict(counts) == expected


def test_pdf_shows_catalog_name_and_links(demo_reports):
    text = pdf_text(demo_reports / "delivery-bb08d0.pdf")

    assert "Campaign 1" in text
    assert "Winter sale starts now" in text
    assert "https://shop.example.com/winter-sale?" in text


def test_index_links_every_delivery(demo_reports):
    index = (demo_reports / "index.html").read_text()

    for delivery in ("bb08d0", "7d81d5", "5a4865", "1534f7", "3440b0", "c51a19"):
        assert f'href="delivery-{delivery}.html"' in index
        assert (demo_reports / f"delivery-{delivery}.html").exists()


@pytest.mark.parametrize("delivery", ["bb08d0", "3440b0"])
def test_timeline_totals_match_delivery_figures(demo_reports, delivery):
    """The over-time table adds up to the engagement figures, proxy opens counted once."""
    text = pdf_text(demo_reports / f"delivery-{delivery}.pdf")
    hits = EXPECTED["apache_rich"][delivery]
    human = EXPECTED["apache_classes_rich"][delivery]

    match = re.search(r"^\s*Total\s+([\d  ]+?)\s{2,}([\d  ]+?)\s{2,}([\d  ]+?)\s{2,}([\d  ]+)$",
                      text, re.M)
    assert match, "the timeline's Total row not found"
    totals = [int(re.sub(r"\D", "", group)) for group in match.groups()]
    assert totals == [hits["open"], human["human_opens"], hits["click"], human["human_clicks"]]


def test_recipient_summaries_add_up_to_human_opens(demo_reports):
    """Summed over recipients, the summaries give the delivery's human opens and clicks."""
    store = demo_reports.parent.parent / "store"
    table = pq.read_table(store / "summaries" / "recipients",
                          columns=["delivery_id", "human_opens", "human_clicks"])
    sums: Counter = Counter()
    for row in table.to_pylist():
        sums[(row["delivery_id"], "human_opens")] += row["human_opens"]
        sums[(row["delivery_id"], "human_clicks")] += row["human_clicks"]

    for delivery, figures in EXPECTED["apache_classes_rich"].items():
        # Only hits with a recipient id are in the summaries; every attributable hit has one.
        assert sums[(delivery, "human_opens")] == figures["human_opens"], delivery
        assert sums[(delivery, "human_clicks")] == figures["human_clicks"], delivery
