"""Per-delivery figures computed over the sample store, checked against hand counts."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pytest
from clicktrail.agent.config import ClassificationConfig
from clicktrail.reporter import metrics as m
from clicktrail.reporter.catalog import load_catalog, parse_catalog
from clicktrail.reporter.period import make_period
from clicktrail.reporter.store import events_dataset, open_store, rejects_dataset

from tests.reporter_fixtures import (
    HOSTILE_URL,
    SAMPLE_TIMEZONE,
    UNSAFE_DELIVERY_ID,
    build_domain_store,
    build_sample_store,
)


@pytest.fixture(scope="module")
def computed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    store_dir = tmp_path_factory.mktemp("store")
    build_sample_store(store_dir)
    return compute_store(store_dir)


@pytest.fixture(scope="module")
def domain_figures(tmp_path_factory: pytest.TempPathFactory) -> m.DeliveryMetrics:
    store_dir = tmp_path_factory.mktemp("domain-store")
    build_domain_store(store_dir)
    return compute_store(store_dir)["figures"]["dd"]


def compute_store(store_dir: Path) -> dict:
    store = open_store(store_dir.as_uri())
    period = make_period(date(2026, 12, 3), SAMPLE_TIMEZONE, 30)

    con = duckdb.connect()
    active = m.find_active_deliveries(con, events_dataset(store), period)
    catalogs = {delivery_id: load_catalog(store, delivery_id) for delivery_id in active}
    duplicates = m.prepare_events(con, active, period, catalogs, ClassificationConfig())
    figures = m.compute_metrics(con, catalogs, duplicates)
    result = {
        "active": active,
        "catalogs": catalogs,
        "figures": figures,
        "rejects": m.count_rejects(con, rejects_dataset(store), period),
        "unattributed": m.count_unattributed(con, period),
    }
    con.close()
    return result


def test_active_deliveries_in_period(computed: dict) -> None:
    # "old" has events only 63 days before the report date.
    assert computed["active"] == [UNSAFE_DELIVERY_ID, "d1", "d2"]


NEWSLETTER_FIGURES = [
    ("processed", 11),
    ("delivered", 6),
    ("hard_bounces", 1),
    ("soft_bounces", 2),
    ("ignored_bounces", 0),
    ("rejected", 1),
    ("deferred_pending", 1),
    ("complaints", 0),
    ("opens", 4),
    ("unique_opens", 3),
    ("opens_including_clicks", 5),
    ("clicks", 4),
    ("unique_clickers", 3),
    ("unsubscriptions", 1),
    ("unsubscribe_page_views", 3),
    ("mirror_page_views", 2),
    ("duplicate_rows", 3),
]


@pytest.mark.parametrize(("name", "expected"), NEWSLETTER_FIGURES,
                         ids=[f[0] for f in NEWSLETTER_FIGURES])
def test_newsletter_figure(computed: dict, name: str, expected: int) -> None:
    assert getattr(computed["figures"]["d1"], name) == expected


NEWSLETTER_RATES = [
    ("delivery_rate", 6, 11, "54.5 %"),
    ("hard_bounce_rate", 1, 11, "9.1 %"),
    ("soft_bounce_rate", 2, 11, "18.2 %"),
    ("unique_open_rate", 5, 6, "83.3 %"),
    ("click_through_rate", 3, 6, "50.0 %"),
    ("reactivity", 3, 5, "60.0 %"),
    ("unsubscription_rate", 1, 6, "16.7 %"),
]


@pytest.mark.parametrize(("name", "numerator", "denominator", "text"), NEWSLETTER_RATES,
                         ids=[r[0] for r in NEWSLETTER_RATES])
def test_newsletter_rate(computed: dict, name: str, numerator: int, denominator: int,
                         text: str) -> None:
    rate = getattr(computed["figures"]["d1"], name)
    assert (rate.numerator, rate.denominator) == (numerator, denominator)
    assert rate.percent() == text


def test_newsletter_links(computed: dict) -> None:
    links = {link.link_id: link for link in computed["figures"]["d1"].links}

    assert (links["L1"].clicks, links["L1"].unique_clickers) == (3, 2)
    assert links["L1"].share.percent() == "75.0 %"
    assert links["L1"].url == "https://www.example.com/offer"
    assert links["L1"].label == "Offer"
    assert (links["L2"].clicks, links["L2"].share.percent()) == (1, "25.0 %")
    assert (links["L3"].clicks, links["L3"].share.percent()) == (0, "0.0 %")


def test_unsubscribe_and_mirror_links_not_clicks(computed: dict) -> None:
    links = {link.link_id: link for link in computed["figures"]["d1"].links}

    assert (links["LU"].clicks, links["LU"].share) == (1, None)
    assert (links["LM"].clicks, links["LM"].share) == (1, None)
    assert links["LU"].link_type == "unsubscribe"


def test_newsletter_bounces_by_reason(computed: dict) -> None:
    bounces = computed["figures"]["d1"].bounces
    rows = [(b.bounce_type, b.bounce_reason, b.recipients) for b in bounces]
    assert rows == [
        ("hard", "user_unknown", 1),
        ("soft", "expired", 1),
        ("soft", "mailbox_full", 1),
    ]


# (kind, domain, domains, processed, delivered, bounces, bounce rate, opens including clicks,
# unique clickers)
NEWSLETTER_DOMAINS = [
    ("domain", "example.com", 1, 4, 3, 1, "25.0 %", 2, 2),
    ("domain", "example.net", 1, 3, 1, 1, "33.3 %", 1, 0),
    ("domain", "example.org", 1, 3, 2, 1, "33.3 %", 2, 1),
    ("unknown", None, 0, 1, 0, 0, "0.0 %", 0, 0),
]


def domain_table(rows: list[m.DomainRow]) -> list[tuple]:
    return [(r.kind, r.domain, r.domains, r.processed, r.delivered, r.bounces,
             r.bounce_rate.percent(), r.opens_including_clicks, r.unique_clickers) for r in rows]


def test_newsletter_by_domain(computed: dict) -> None:
    # r9 was rejected before its address was parsed, so its domain is unknown.
    assert domain_table(computed["figures"]["d1"].domains) == NEWSLETTER_DOMAINS


def test_domain_rows_add_up_to_delivery(computed: dict) -> None:
    d1 = computed["figures"]["d1"]

    assert sum(row.processed for row in d1.domains) == d1.processed
    assert sum(row.delivered for row in d1.domains) == d1.delivered
    assert sum(row.bounces for row in d1.domains) == d1.hard_bounces + d1.soft_bounces
    assert sum(row.opens_including_clicks for row in d1.domains) == d1.opens_including_clicks
    assert sum(row.unique_clickers for row in d1.domains) == d1.unique_clickers


def test_newsletter_diagnostics(computed: dict) -> None:
    rows = [(d.event_type, d.bounce_type, d.bounce_reason, d.diagnostic, d.recipients)
            for d in computed["figures"]["d1"].diagnostics]
    assert rows == [
        ("deferred", "soft", "refused", "451 4.7.1 <*@*>: greylisted, try again later", 3),
        ("bounced", "hard", "user_unknown", "550 5.1.1 <*@*>: user unknown", 1),
        ("bounced", "soft", "mailbox_full", "552 5.2.2 <*@*>: mailbox full", 1),
        ("deferred", "soft", "unreachable",
         "connect to mx.example.net[*]:*: Connection timed out", 1),
        # No diagnostic_group: the raw diagnostic stands in.
        ("expired", "soft", "expired",
         "delivery temporarily suspended: connect to mx.example.net", 1),
    ]


# Top 10 domains by processed, ties by name; k, l, x and y form "others". The seed list's
# recipient id has addresses at big, x and y: it counts once under big.example and once under
# "others", although two of its addresses are there. "ghost" has no MTA event.
LONG_TAIL_DOMAINS = [
    ("domain", "big.example", 1, 7, 6, 1, "14.3 %", 3, 2),
    ("domain", "mid.example", 1, 4, 3, 1, "25.0 %", 0, 0),
    *[("domain", f"{letter}.example", 1, 2, 2, 0, "0.0 %", 0, 0) for letter in "cdefghij"],
    ("others", None, 4, 6, 6, 0, "0.0 %", 2, 1),
    ("unknown", None, 0, 0, 0, 0, "n/a", 1, 1),
]


def test_long_tail_by_domain(domain_figures: m.DeliveryMetrics) -> None:
    assert domain_table(domain_figures.domains) == LONG_TAIL_DOMAINS


def test_seed_list_counted_once_per_domain_row(domain_figures: m.DeliveryMetrics) -> None:
    # Delivery-wide, seed counts once; the rows count it under big.example and "others".
    assert domain_figures.opens_including_clicks == 5
    assert sum(row.opens_including_clicks for row in domain_figures.domains) == 6
    assert sum(row.unique_clickers for row in domain_figures.domains) == 4
    assert domain_figures.processed == sum(row.processed for row in domain_figures.domains)


def test_top_diagnostics_cut_at_ten(domain_figures: m.DeliveryMetrics) -> None:
    rows = [(d.event_type, d.bounce_type, d.bounce_reason, d.diagnostic, d.recipients)
            for d in domain_figures.diagnostics]
    assert rows == [
        # big.example-1 was deferred twice and counts once.
        ("deferred", "soft", "refused", "451 4.7.1 <*@*>: greylisted, try again later", 4),
        # Files written without the diagnostic_group column group on the raw diagnostic.
        ("deferred", "soft", "unreachable",
         "connect to mx.mid.example[192.0.2.4]:25: Connection timed out", 2),
        ("bounced", "hard", "user_unknown", "550 5.1.1 <*@*>: user unknown", 1),
        *[("deferred", "soft", "refused", f"421 4.7.0 {letter}.example: too many connections", 1)
          for letter in "cdefghi"],
    ]


def test_tracking_only_delivery(computed: dict) -> None:
    d2 = computed["figures"]["d2"]

    assert not d2.has_mta_data
    assert (d2.processed, d2.delivered) == (0, 0)
    assert (d2.opens, d2.opens_including_clicks, d2.clicks, d2.unique_clickers) == (1, 2, 2, 2)
    assert d2.click_through_rate.percent() == "n/a"
    assert d2.reactivity.percent() == "100.0 %"


def test_urls_from_logs_without_catalog(computed: dict) -> None:
    links = {link.link_id: link for link in computed["figures"]["d2"].links}

    assert links["k9"].url == "https://shop.example.net/a"
    assert links["k10"].url == HOSTILE_URL
    assert links["k10"].label is None


def test_catalog_missing_and_unsafe_id(computed: dict) -> None:
    assert computed["catalogs"]["d1"].found
    assert not computed["catalogs"]["d2"].found
    assert computed["catalogs"]["d2"].problem is None
    assert computed["catalogs"][UNSAFE_DELIVERY_ID].problem == "the delivery id is not a plain name"


def test_rejects_per_source_since_period_start(computed: dict) -> None:
    assert computed["rejects"] == [("mta", "postfix", 1), ("tracking", "access_log", 3)]


def test_events_without_delivery_id(computed: dict) -> None:
    assert computed["unattributed"] == [("sent", 1)]


def test_rate_with_zero_denominator() -> None:
    rate = m.Rate(0, 0)
    assert rate.value is None
    assert rate.percent() == "n/a"


INVALID_CATALOGS = [
    ("not-object", b"[]", "expected a JSON object"),
    ("other-id", b'{"delivery_id": "x"}', "delivery_id is 'x'"),
    ("owners", b'{"owners": "a@example.com"}', "owners must be a list"),
    ("naive-time", b'{"sent_at": "2026-12-02T08:00:00"}', "has no UTC offset"),
    ("link-id", b'{"links": [{"url": "https://x"}]}', r"links\[0\] must be an object"),
]


@pytest.mark.parametrize(("raw", "message"), [c[1:] for c in INVALID_CATALOGS],
                         ids=[c[0] for c in INVALID_CATALOGS])
def test_invalid_catalog_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_catalog("d1", raw)


def test_invalid_catalog_shown_as_unusable(tmp_path: Path) -> None:
    (tmp_path / "catalog" / "deliveries").mkdir(parents=True)
    (tmp_path / "catalog" / "deliveries" / "d9.json").write_text("{not json", encoding="utf-8")

    catalog = load_catalog(open_store(str(tmp_path)), "d9")

    assert not catalog.found
    assert catalog.problem is not None
    assert catalog.problem.startswith("invalid catalog entry")
