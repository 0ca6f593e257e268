"""User agent descriptions, and the mail client breakdown over a hand-made store and the
bundled logs."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import duckdb
import pytest
from clicktrail.agent.config import ClassificationConfig
from clicktrail.reporter import clients
from clicktrail.reporter import metrics as m
from clicktrail.reporter import useragents as ua
from clicktrail.reporter.catalog import load_catalog
from clicktrail.reporter.period import make_period
from clicktrail.reporter.render import make_environment, render_html
from clicktrail.reporter.sections import SectionInput, registered_sections
from clicktrail.reporter.store import events_dataset, open_store
from clicktrail.reporter.useragents import ClientDescription, describe_user_agent, mail_client

from .conftest import CASES
from .reporter_fixtures import event_row, write_catalog, write_events

# The nightly run over the bundled logs, shared with the end-to-end tests.
from .test_end_to_end import demo_reports  # noqa: F401

# User agents logged by real clients and scanners.
OUTLOOK_UA = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)"
OUTLOOK_OLD_UA = "Mozilla/4.0 (compatible; ms-office; MSOffice 16)"
IPHONE_MAIL_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 "
                  "(KHTML, like Gecko) Mobile/15E148")
IPAD_MAIL_UA = ("Mozilla/5.0 (iPad; CPU OS 16_7_8 like Mac OS X) AppleWebKit/605.1.15 "
                "(KHTML, like Gecko) Mobile/15E148")
IPHONE_SAFARI_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 "
                    "(KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1")
MAC_MAIL_UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
               "(KHTML, like Gecko)")
MAC_SAFARI_UA = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Version/18.1 Safari/605.1.15")
CHROME_WINDOWS_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                     "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36")
FIREFOX_LINUX_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
THUNDERBIRD_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0"
SAMSUNG_UA = ("Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-S911B) AppleWebKit/537.36 "
              "(KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36")
ANDROID_WEBVIEW_UA = ("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/AP2A.240805.005; wv) "
                      "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/131.0.6778.39 "
                      "Mobile Safari/537.36")
APPLE_MPP_UA = "Mozilla/5.0"
GMAIL_PROXY_UA = ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
                  "(via ggpht.com GoogleImageProxy)")
YAHOO_PROXY_UA = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
HEADLESS_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
               "HeadlessChrome/121.0.6167.85 Safari/537.36")
PYTHON_REQUESTS_UA = "python-requests/2.31.0"
MIMECAST_UA = "Mimecast-URL-Protect/1.0"
BARRACUDA_UA = "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))"
# A scanner that poses as Internet Explorer sends the same user agent as Internet Explorer.
MSIE_UA = "Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1; Trident/5.0)"
BINGBOT_UA = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
LONG_UA = "Mozilla/5.0 (X11; Linux x86_64)" + " AppleWebKit/537.36 (KHTML, like Gecko)" * 70
LOG_INJECTION_UA = 'Evil" 200 42 "-" "fake/1.0'
NON_ASCII_UA = "Mozilla/5.0 (Linux; Android 13; ru-RU) Почта/1.0 📧 メール"
QUOTES_UA = 'Mozilla/5.0 "quoted" \\backslash\\ (test; a="b")'
TAB_UA = "Mozilla/5.0\t(tab\tseparated)"
LATIN1_UA = "Mozilla/5.0 (Macintosh) Courriel/2.0 (français; España)"


def described(mail: str, browser: str, os: str, device: str) -> ClientDescription:
    return ClientDescription(mail_client=mail, browser=browser, os=os, device=device)


UNKNOWN = described("unknown", "unknown", "unknown", "unknown")

DESCRIPTION_CASES = [
    ("outlook", OUTLOOK_UA, described("Outlook", "Outlook", "Windows", "Desktop")),
    ("outlook ms-office", OUTLOOK_OLD_UA, described("Outlook", "Outlook", "unknown", "Desktop")),
    ("iphone mail", IPHONE_MAIL_UA,
     described("Apple Mail", "Mobile Safari UI/WKWebView", "iOS", "Phone")),
    ("ipad mail", IPAD_MAIL_UA,
     described("Apple Mail", "Mobile Safari UI/WKWebView", "iOS", "Tablet")),
    ("mac mail", MAC_MAIL_UA, described("Apple Mail", "Apple Mail", "Mac OS X", "Desktop")),
    ("iphone safari", IPHONE_SAFARI_UA,
     described("Webmail or browser", "Mobile Safari", "iOS", "Phone")),
    ("mac safari", MAC_SAFARI_UA, described("Webmail or browser", "Safari", "Mac OS X", "Desktop")),
    ("chrome windows", CHROME_WINDOWS_UA,
     described("Webmail or browser", "Chrome", "Windows", "Desktop")),
    ("firefox linux", FIREFOX_LINUX_UA,
     described("Webmail or browser", "Firefox", "Linux", "Desktop")),
    ("thunderbird", THUNDERBIRD_UA, described("Thunderbird", "Thunderbird", "Linux", "Desktop")),
    ("samsung internet", SAMSUNG_UA,
     described("Webmail or browser", "Samsung Internet", "Android", "Phone")),
    ("android webview", ANDROID_WEBVIEW_UA,
     described("Android app (WebView)", "Chrome Mobile WebView", "Android", "Phone")),
    ("apple mpp", APPLE_MPP_UA,
     described("Apple Mail Privacy Protection", "Apple Mail Privacy Protection", "unknown",
               "Image proxy")),
    ("gmail proxy", GMAIL_PROXY_UA,
     described("Gmail image proxy", "Gmail image proxy", "unknown", "Image proxy")),
    ("yahoo proxy", YAHOO_PROXY_UA,
     described("Yahoo Mail proxy", "Yahoo Mail proxy", "unknown", "Image proxy")),
    ("headless chrome", HEADLESS_UA,
     described("Bot or script", "HeadlessChrome", "Windows", "Bot or script")),
    ("python requests", PYTHON_REQUESTS_UA,
     described("Bot or script", "Python Requests", "unknown", "Bot or script")),
    ("mimecast", MIMECAST_UA, described("Bot or script", "unknown", "unknown", "Bot or script")),
    ("barracuda", BARRACUDA_UA, described("Bot or script", "unknown", "unknown", "Bot or script")),
    ("bingbot", BINGBOT_UA, described("Bot or script", "bingbot", "unknown", "Bot or script")),
    ("msie scanner", MSIE_UA, described("Webmail or browser", "IE", "Windows", "Desktop")),
    ("absent", None, UNKNOWN),
    ("empty", "", UNKNOWN),
    ("dash", "-", UNKNOWN),
    ("blank", "   ", UNKNOWN),
    ("over-long", LONG_UA, UNKNOWN),
    ("log injection", LOG_INJECTION_UA, UNKNOWN),
    ("quotes and backslashes", QUOTES_UA, UNKNOWN),
    ("tabs", TAB_UA, UNKNOWN),
    ("latin-1 words", LATIN1_UA, UNKNOWN),
    ("non-ascii", NON_ASCII_UA, described("Webmail or browser", "Android", "Android", "Tablet")),
]


@pytest.mark.parametrize(("user_agent", "expected"),
                         [(agent, expected) for _, agent, expected in DESCRIPTION_CASES],
                         ids=[case_id for case_id, _, _ in DESCRIPTION_CASES])
def test_describe_user_agent(user_agent: str | None, expected: ClientDescription) -> None:
    assert describe_user_agent(user_agent) == expected


@pytest.mark.parametrize(("user_agent", "expected"), [
    (OUTLOOK_UA, "Outlook"),
    (IPHONE_MAIL_UA, "Apple Mail"),
    (APPLE_MPP_UA, "Apple Mail Privacy Protection"),
    (None, "unknown"),
], ids=["outlook", "apple mail", "apple mpp", "absent"])
def test_mail_client_short_name(user_agent: str | None, expected: str) -> None:
    assert mail_client(user_agent) == expected


def test_long_user_agent_limit() -> None:
    assert len(LONG_UA) > ua.MAX_USER_AGENT_CHARS

    # Outlook's tokens do not count once the string is over the limit.
    padded = OUTLOOK_UA + " " * 10 + "x" * ua.MAX_USER_AGENT_CHARS
    assert describe_user_agent(padded) == UNKNOWN

    at_limit = OUTLOOK_UA + " x" * ((ua.MAX_USER_AGENT_CHARS - len(OUTLOOK_UA)) // 2)
    assert len(at_limit) <= ua.MAX_USER_AGENT_CHARS
    assert describe_user_agent(at_limit).mail_client == "Outlook"


def test_description_cached_per_user_agent() -> None:
    ua._describe.cache_clear()

    first = describe_user_agent(OUTLOOK_UA)
    second = describe_user_agent(OUTLOOK_UA)

    assert second is first
    assert ua._describe.cache_info().misses == 1
    assert ua._describe.cache_info().hits == 1


# The hand-made store: delivery "dc", report date 2026-12-03 in Europe/Paris.
CLIENT_TIMEZONE = "Europe/Paris"
CLIENT_REPORT_DATE = date(2026, 12, 3)
CLIENT_CATALOG = {
    "delivery_id": "dc",
    "name": "Client test delivery",
    "sent_at": "2026-12-02T08:00:00Z",
    "links": [
        {"link_id": "L1", "url": "https://www.example.com/a", "type": "click"},
        {"link_id": "L2", "url": "https://www.example.com/b", "type": "click"},
        {"link_id": "LU", "url": "https://www.example.com/unsub", "type": "unsubscribe"},
    ],
}
# User agents that the test classification marks as machines or proxies. Every other open and
# click is human.
TEST_CLASSES = {APPLE_MPP_UA: "machine_prefetch", PYTHON_REQUESTS_UA: "scanner_click",
                GMAIL_PROXY_UA: "proxy_open"}


def build_client_store(store: Path) -> None:
    """Write delivery "dc" (opens and clicks from seven user agents) and "dm" (MTA events only)."""
    def hit(recipient: str, event_type: str, user_agent: str | None, minute: int,
            **extra: str) -> dict:
        return event_row(event_type=event_type, event_time=f"2026-12-02T09:{minute:02d}:00Z",
                         delivery_id="dc", recipient_id=recipient, http_method="GET",
                         user_agent=user_agent, **extra)

    write_events(store, [
        hit("ra", "open", OUTLOOK_UA, 1),
        hit("ra", "open", OUTLOOK_UA, 2),
        hit("ra", "click", CHROME_WINDOWS_UA, 3, link_id="L1"),
        hit("rb", "open", APPLE_MPP_UA, 4),
        hit("rb", "open", IPHONE_MAIL_UA, 5),
        hit("rb", "click", IPHONE_SAFARI_UA, 6, link_id="L1"),
        hit("rb", "click", IPHONE_SAFARI_UA, 7, link_id="L2"),
        hit("rc", "open", APPLE_MPP_UA, 8),
        hit("rd", "open", GMAIL_PROXY_UA, 9),
        hit("rd", "click", None, 10, link_id="L1"),
        hit("re", "click", PYTHON_REQUESTS_UA, 11, link_id="L1"),
        # A click on the unsubscribe link is a page view, not a click.
        hit("re", "click", CHROME_WINDOWS_UA, 12, link_id="LU"),
        hit("rf", "open", "-", 13),
        hit("rf", "open", "", 14),
    ], file_stem="mx1-tracking-0")
    write_events(store, [
        event_row(event_type="sent", event_time="2026-12-02T08:01:00Z", delivery_id="dm",
                  recipient_id="rm", recipient_domain="example.com"),
    ], file_stem="mx1-mta-0")
    write_catalog(store, CLIENT_CATALOG)


def apply_test_classes(con: duckdb.DuckDBPyConnection) -> None:
    """Replace event_classes with TEST_CLASSES: every open and click has one class."""
    cases = " ".join(f"WHEN user_agent = '{agent}' THEN '{name}'"
                     for agent, name in TEST_CLASSES.items())
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE event_classes AS
        SELECT event_id, CASE {cases} ELSE 'human' END AS class, []::VARCHAR[] AS reasons
        FROM events WHERE event_type IN ('open', 'click')
    """)


@pytest.fixture(scope="module")
def breakdown_input(tmp_path_factory: pytest.TempPathFactory):
    store_dir = tmp_path_factory.mktemp("client-store")
    build_client_store(store_dir)
    store = open_store(store_dir.as_uri())
    period = make_period(CLIENT_REPORT_DATE, CLIENT_TIMEZONE, 30)

    con = duckdb.connect()
    active = m.find_active_deliveries(con, events_dataset(store), period)
    catalogs = {delivery_id: load_catalog(store, delivery_id) for delivery_id in active}
    m.prepare_events(con, active, period, catalogs, ClassificationConfig())
    apply_test_classes(con)
    m.create_figure_view(con)
    yield SectionInput(con=con, catalogs=catalogs, period=period, store=store)
    con.close()


def rows_of(breakdown: clients.ClientBreakdown, dimension: str) -> list[tuple]:
    table = next(table for table in breakdown.tables if table.dimension == dimension)
    return [(row.name, row.value_count, row.opens, row.openers, row.human_opens,
             row.human_openers, row.clicks, row.clickers, row.human_clicks, row.human_clickers)
            for row in table.rows]


# (name, values, opens, openers, human opens, human openers, clicks, clickers, human clicks,
# human clickers), ranked by opens and clicks together, ties in name order.
EXPECTED_MAIL_CLIENTS = [
    ("Webmail or browser", 1, 0, 0, 0, 0, 3, 2, 3, 2),
    ("unknown", 1, 2, 1, 2, 1, 1, 1, 1, 1),
    ("Apple Mail Privacy Protection", 1, 2, 2, 0, 0, 0, 0, 0, 0),
    ("Outlook", 1, 2, 1, 2, 1, 0, 0, 0, 0),
    ("Apple Mail", 1, 1, 1, 1, 1, 0, 0, 0, 0),
    ("Bot or script", 1, 0, 0, 0, 0, 1, 1, 0, 0),
    ("Gmail image proxy", 1, 1, 1, 1, 1, 0, 0, 0, 0),
]

# Eight browsers: exactly MAX_CLIENT_ROWS, so no others row.
EXPECTED_BROWSERS = [
    ("unknown", 1, 2, 1, 2, 1, 1, 1, 1, 1),
    ("Apple Mail Privacy Protection", 1, 2, 2, 0, 0, 0, 0, 0, 0),
    ("Mobile Safari", 1, 0, 0, 0, 0, 2, 1, 2, 1),
    ("Outlook", 1, 2, 1, 2, 1, 0, 0, 0, 0),
    ("Chrome", 1, 0, 0, 0, 0, 1, 1, 1, 1),
    ("Gmail image proxy", 1, 1, 1, 1, 1, 0, 0, 0, 0),
    ("Mobile Safari UI/WKWebView", 1, 1, 1, 1, 1, 0, 0, 0, 0),
    ("Python Requests", 1, 0, 0, 0, 0, 1, 1, 0, 0),
]

EXPECTED_DEVICES = [
    ("Desktop", 1, 2, 1, 2, 1, 1, 1, 1, 1),
    ("Image proxy", 1, 3, 3, 1, 1, 0, 0, 0, 0),
    ("Phone", 1, 1, 1, 1, 1, 2, 1, 2, 1),
    ("unknown", 1, 2, 1, 2, 1, 1, 1, 1, 1),
    ("Bot or script", 1, 0, 0, 0, 0, 1, 1, 0, 0),
]

EXPECTED_OS = [
    ("unknown", 1, 5, 4, 3, 2, 2, 2, 1, 1),
    ("Windows", 1, 2, 1, 2, 1, 1, 1, 1, 1),
    ("iOS", 1, 1, 1, 1, 1, 2, 1, 2, 1),
]


def test_clients_section_registered() -> None:
    names = [section.name for section in registered_sections()]

    assert "clients" in names


def test_breakdown_only_deliveries_with_hits(breakdown_input: SectionInput) -> None:
    breakdown = clients.compute_clients(breakdown_input)

    assert sorted(breakdown) == ["dc"]


@pytest.mark.parametrize(("dimension", "expected"), [
    ("mail_client", EXPECTED_MAIL_CLIENTS),
    ("browser", EXPECTED_BROWSERS),
    ("os", EXPECTED_OS),
    ("device", EXPECTED_DEVICES),
], ids=["mail client", "browser", "os", "device"])
def test_breakdown_rows(breakdown_input: SectionInput, dimension: str,
                        expected: list[tuple]) -> None:
    breakdown = clients.compute_clients(breakdown_input)["dc"]

    assert rows_of(breakdown, dimension) == expected


def test_breakdown_rows_up_to_limit(breakdown_input: SectionInput) -> None:
    breakdown = clients.compute_clients(breakdown_input)["dc"]

    assert len(EXPECTED_BROWSERS) == clients.MAX_CLIENT_ROWS
    assert len(rows_of(breakdown, "browser")) == clients.MAX_CLIENT_ROWS


def test_breakdown_table_order(breakdown_input: SectionInput) -> None:
    breakdown = clients.compute_clients(breakdown_input)["dc"]

    assert [table.heading for table in breakdown.tables] == [
        "Mail client", "Browser", "Operating system", "Device type"]


def test_breakdown_others_row(breakdown_input: SectionInput,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clients, "MAX_CLIENT_ROWS", 3)

    breakdown = clients.compute_clients(breakdown_input)["dc"]

    # Outlook, Apple Mail, Bot or script and Gmail image proxy share the others row.
    assert rows_of(breakdown, "mail_client") == [
        *EXPECTED_MAIL_CLIENTS[:3],
        (None, 4, 4, 3, 4, 3, 1, 1, 0, 0),
    ]


def test_breakdown_parses_each_user_agent_once(breakdown_input: SectionInput) -> None:
    ua._describe.cache_clear()

    clients.compute_clients(breakdown_input)

    # Seven distinct user agents are parsed; absent, empty and "-" need no parsing.
    assert ua._describe.cache_info().misses == 7
    assert ua._describe.cache_info().hits == 0


def test_breakdown_chart(breakdown_input: SectionInput) -> None:
    chart = clients.compute_clients(breakdown_input)["dc"].chart

    assert chart is not None
    assert chart.data_uri.startswith("data:image/svg+xml;base64,")
    assert chart.description.startswith("unknown: 2 opens, 2 human; "
                                        "Apple Mail Privacy Protection: 2 opens, 0 human")


def test_section_template_escapes_names() -> None:
    hostile = "<script>alert('ua')</script>"
    row = clients.ClientRow(hostile, 1, 1, 1, 1, 1, 0, 0, 0, 0)
    others = clients.ClientRow(None, 12, 5, 4, 3, 2, 1, 1, 1, 1)
    data = clients.ClientBreakdown(
        tables=[clients.ClientTable("browser", "Browser", [row, others])], chart=None)

    html = render_html(make_environment(), "sections/clients.html.j2", {"data": data})

    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "others (12)" in html
    assert "Human: hits classed human, proxy_open, unknown." in html


# Opens and clicks per mail client of the bundled logs, from the corpus generator's labels.
EXPECTED_DEMO_CLIENTS = json.loads(
    (CASES / "expected_demo_clients.json").read_text(encoding="utf-8"))["apache_rich"]


def mail_client_rows(html: str) -> dict[str, dict[str, int]]:
    """Read the raw columns of the "By mail client" table of a delivery report."""
    table = html.split('id="clients"', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.S):
        cells = [re.sub(r"<[^>]+>", "", cell).strip()
                 for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        numbers = [int(re.sub(r"\D", "", cell)) for cell in cells[1:]]
        rows[cells[0]] = {"opens": numbers[0], "openers": numbers[1],
                          "clicks": numbers[4], "clickers": numbers[5]}
    return rows


@pytest.mark.parametrize("delivery", sorted(EXPECTED_DEMO_CLIENTS))
def test_demo_mail_clients_match_ground_truth(request: pytest.FixtureRequest,
                                              delivery: str) -> None:
    report_dir = request.getfixturevalue("demo_reports")
    html = (report_dir / f"delivery-{delivery}.html").read_text(encoding="utf-8")
    rows = mail_client_rows(html)
    expected = EXPECTED_DEMO_CLIENTS[delivery]

    for name, figures in rows.items():
        if not name.startswith("others ("):
            assert figures == expected[name], name

    # The others row sums the hits of the clients without a row. Its recipients cannot be
    # checked, because a recipient can count under several of those clients.
    rest = [figures for name, figures in expected.items() if name not in rows]
    if rest:
        others = rows[f"others ({len(rest)})"]
        assert others["opens"] == sum(figures["opens"] for figures in rest)
        assert others["clicks"] == sum(figures["clicks"] for figures in rest)
    assert len(rows) == min(len(expected), clients.MAX_CLIENT_ROWS + 1)
