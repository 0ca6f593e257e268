"""The hot clicks page: badge values counted by hand, hostile email HTML, and the content file."""

from __future__ import annotations

import json
import logging
import re
import subprocess
from datetime import date
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from clicktrail.reporter import metrics as m
from clicktrail.reporter.catalog import (
    MAX_CONTENT_BYTES,
    DeliveryCatalog,
    import_catalog,
    load_catalog,
    parse_catalog,
)
from clicktrail.reporter.cli import main as report_main
from clicktrail.reporter.hotclicks import (
    HotClicksPage,
    LinkMatcher,
    build_page,
    compute_hot_clicks,
    filter_style,
    mark_up_email,
    normalise_url,
)
from clicktrail.reporter.nightly import run_nightly
from clicktrail.reporter.period import make_period
from clicktrail.reporter.sections import SectionInput
from clicktrail.reporter.store import events_dataset, open_store
from weasyprint import HTML

from tests.reporter_fixtures import event_row, write_catalog, write_events

from .test_render_fetcher import Listener

# WeasyPrint 70 warns at import when the system library libharfbuzz-subset is missing; its
# fontTools fallback renders the same PDFs.
pytestmark = pytest.mark.filterwarnings(
    "ignore:HarfBuzz-Subset will be required:DeprecationWarning")

TIMEZONE = "Europe/Paris"
REPORT_DATE = date(2026, 12, 3)

CATALOG = {
    "delivery_id": "h1",
    "name": "Hot clicks test",
    "sent_at": "2026-12-02T08:00:00Z",
    "content": "h1.html",
    "links": [
        {"link_id": "A", "url": "https://www.example.com/offer", "type": "click"},
        {"link_id": "B", "url": "https://shop.example.com/shoes/", "type": "click"},
        {"link_id": "C", "url": "https://www.example.com/never", "label": "Never drawn",
         "type": "click"},
        {"link_id": "U", "url": "https://www.example.com/unsub", "type": "unsubscribe"},
        {"link_id": "M", "url": "https://www.example.com/mirror", "type": "mirror"},
    ],
}
# A by data-link-id, B by its URL written with another host case and no trailing slash; U and M
# are drawn without badges; the mailto link matches nothing.
CONTENT = """<!DOCTYPE html><html><head><title>Hot</title></head><body>
<p><a href="https://tracker.example.net/r/1" data-link-id="A">Offer</a></p>
<p><a href="https://SHOP.Example.com/shoes">Shoes</a></p>
<p><a href="https://www.example.com/unsub">Unsubscribe</a>
<a href="https://www.example.com/mirror">View online</a>
<a href="mailto:help@example.com">Write to us</a></p>
</body></html>"""

# Clicks: A three times, B once, and one on a link the catalog does not list: 5 clicks. The
# unsubscribe and mirror hits are page views, not clicks. One of A's clicks is classed as a
# scanner's, which leaves 4 human clicks.
#   raw:   A 3/5 = 60.0 %, B 1/5 = 20.0 %
#   human: A 2/4 = 50.0 %, B 1/4 = 25.0 %
SCANNER_EVENT = "scanner-click-1"


def hot_clicks_rows() -> list[dict]:
    minutes = iter(range(10, 60, 5))

    # Clicks minutes apart, with a browser's user agent, so that the nightly run's
    # classification finds no burst and classes every click human.
    def click(recipient: str, link_id: str, **extra) -> dict:
        return event_row(event_type="click", event_time=f"2026-12-02T10:{next(minutes)}:00Z",
                         delivery_id="h1", recipient_id=recipient, link_id=link_id,
                         http_method="GET", user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
                         **extra)

    return [
        click("r1", "A"), click("r2", "A"), click("r3", "A", event_id=SCANNER_EVENT),
        click("r1", "B"), click("r2", "Z"),
        click("r1", "U"), click("r2", "U"), click("r3", "M"),
    ]


def build_store(root: Path, content: str | bytes = CONTENT, catalog: dict = CATALOG) -> Path:
    store = root / "store"
    write_events(store, hot_clicks_rows())
    write_catalog(store, catalog)
    target = store / "catalog" / "deliveries" / "h1.html"
    if isinstance(content, str):
        target.write_text(content, encoding="utf-8")
    else:
        target.write_bytes(content)
    return store


def compute_pages(store_dir: Path, classes_sql: str) -> dict[str, HotClicksPage]:
    """Run the section's compute step as the nightly run does, with event_classes from SQL."""
    store = open_store(store_dir.as_uri())
    period = make_period(REPORT_DATE, TIMEZONE, 30)
    con = duckdb.connect()
    try:
        active = m.find_active_deliveries(con, events_dataset(store), period)
        catalogs = {delivery_id: load_catalog(store, delivery_id) for delivery_id in active}
        m.load_events(con, active, period)
        m.set_link_types(con, catalogs)
        con.execute(classes_sql)
        m.create_figure_view(con)
        return compute_hot_clicks(SectionInput(con=con, catalogs=catalogs, period=period,
                                               store=store))
    finally:
        con.close()


CLASSES_WITH_SCANNER_SQL = f"""
CREATE TEMP TABLE event_classes AS
SELECT event_id,
       CASE WHEN event_id = '{SCANNER_EVENT}' THEN 'scanner_click' ELSE 'human' END AS class,
       []::VARCHAR[] AS reasons
FROM events
WHERE event_type IN ('open', 'click')
"""


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> HotClicksPage:
    store = build_store(tmp_path_factory.mktemp("hot"))
    return compute_pages(store, CLASSES_WITH_SCANNER_SQL)["h1"]


def test_badge_values_by_data_link_id(page: HotClicksPage) -> None:
    assert page.problem is None
    assert page.html is not None
    assert ('<span class="hc-share">60.0 %</span> (3 clicks) '
            '<span class="hc-human">human 50.0 % (2)</span>') in page.html


def test_badge_values_by_normalised_url(page: HotClicksPage) -> None:
    assert page.html is not None
    assert ('<span class="hc-share">20.0 %</span> (1 click) '
            '<span class="hc-human">human 25.0 % (1)</span>') in page.html


def test_totals_and_link_counts(page: HotClicksPage) -> None:
    assert page.clicks == 5
    assert page.human_clicks == 4
    assert page.tracked == 2
    assert page.untracked == 1


def test_unsubscribe_and_mirror_not_drawn(page: HotClicksPage) -> None:
    assert page.html is not None
    badges = re.findall(r'<span class="hc-badge[^"]*">', page.html)
    # A, B and the untracked mailto link.
    assert len(badges) == 3
    assert "Unsubscribe</span><span class=\"hc-badge" not in page.html
    assert "View online</span><span class=\"hc-badge" not in page.html
    assert 'Write to us</span><span class="hc-badge hc-untracked">not tracked</span>' in page.html


def test_catalog_link_missing_from_html_listed(page: HotClicksPage) -> None:
    assert [(link.link_id, clicks.clicks) for link, clicks in page.missing] == [("C", 0)]


URLS = [
    ("host-case", "HTTPS://WWW.Example.COM/a?x=1", "https://www.example.com/a?x=1"),
    ("trailing-slash", "https://example.com/a/", "https://example.com/a"),
    ("root", "https://example.com/", "https://example.com"),
    ("path-case-kept", "https://example.com/A", "https://example.com/A"),
    ("query-kept", "https://example.com/a/?Q=1", "https://example.com/a?Q=1"),
]


@pytest.mark.parametrize(("url", "expected"), [c[1:] for c in URLS], ids=[c[0] for c in URLS])
def test_normalise_url(url: str, expected: str) -> None:
    assert normalise_url(url) == expected


def mark_up(content: str) -> str:
    catalog = parse_catalog("h1", json.dumps(CATALOG).encode())
    return str(mark_up_email(content, LinkMatcher(catalog, {"A": (1, 1)})))


# Each attack, and text that must not survive it.
ATTACKS = [
    ("script", '<p>hi</p><script>alert("x")</script>', ["<script", "alert"]),
    ("onerror", '<img src="x.png" onerror="alert(1)" alt="pic">', ["onerror", "alert"]),
    ("javascript-href", '<a href="javascript:alert(1)">go</a>', ["javascript", "alert"]),
    ("javascript-entity", '<a href="jav&#x09;ascript:alert(1)">go</a>', ["ascript", "alert"]),
    ("data-href", '<a href="data:text/html,<b>x</b>">go</a>', ["data:"]),
    ("data-image", '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="x">', ["data:"]),
    ("remote-image", '<img src="https://cdn.example.net/p.gif" alt="pixel">', ["cdn.example"]),
    ("stylesheet", '<link rel="stylesheet" href="https://cdn.example.net/s.css"><p>x</p>',
     ["cdn.example", "<link", "stylesheet"]),
    ("import", "<style>@import url(https://cdn.example.net/s.css);</style><p>x</p>",
     ["@import", "cdn.example"]),
    ("style-url", '<td style="background:url(https://cdn.example.net/b.png); color: red">x</td>',
     ["url(", "cdn.example"]),
    ("style-escape", '<p style="background-image: u\\72l(https://cdn.example.net/b.png)">x</p>',
     ["cdn.example", "\\72"]),
    ("background-attribute", '<table background="https://cdn.example.net/b.png"><tr><td>x',
     ["cdn.example"]),
    ("iframe", '<iframe src="https://cdn.example.net/"></iframe><p>x</p>', ["<iframe", "cdn"]),
    ("form", '<form action="https://cdn.example.net/"><input name="q"></form>',
     ["<form", "<input", "cdn"]),
    ("meta-refresh", '<meta http-equiv="refresh" content="0;url=https://cdn.example.net/">',
     ["refresh", "cdn"]),
    ("position-fixed", '<div style="position: fixed; top: 0">x</div>', ["position", "fixed"]),
    ("negative-margin", '<div style="margin-top: -2000px">x</div>', ["margin"]),
    ("forged-badge", '<span class="hc-badge">99 %</span>', ['class="hc-badge']),
    ("report-id", '<h2 id="hot_clicks">x</h2>', ["id="]),
    ("style-block", "<style>body { display: none }</style><p>x</p>", ["display", "body"]),
]


@pytest.mark.parametrize(("content", "forbidden"), [c[1:] for c in ATTACKS],
                         ids=[c[0] for c in ATTACKS])
def test_attack_removed(content: str, forbidden: list[str]) -> None:
    marked_up = mark_up(content)

    for text in forbidden:
        assert text not in marked_up


def test_remote_image_becomes_box_with_alt() -> None:
    marked_up = mark_up('<img src="https://cdn.example.net/p.gif" alt="Sale &amp; <more>" '
                        'width="600" height="160">')

    assert marked_up == ('<span class="hc-image" style="width: 600px; height: 160px">'
                         "Sale &amp; &lt;more&gt;</span>")


def test_image_without_alt_says_image() -> None:
    assert mark_up('<img src="https://cdn.example.net/p.gif">') == (
        '<span class="hc-image">image</span>')


def test_presentational_attributes_become_style() -> None:
    marked_up = mark_up('<table width="100%" bgcolor="#f4f4f4" cellpadding="10" cellspacing="0">'
                        '<tr><td align="center"><table width="600"><tr><td valign="top">x'
                        '</td></tr></table></td></tr></table>')

    assert marked_up == (
        '<table width="100%" bgcolor="#f4f4f4" cellpadding="10" cellspacing="0" '
        'style="width: 100%; background-color: #f4f4f4; border-spacing: 0px"><tbody><tr>'
        '<td align="center" style="text-align: center; padding: 10px">'
        '<table width="600" style="width: 600px; margin-left: auto; margin-right: auto">'
        '<tbody><tr><td valign="top" style="vertical-align: top">x</td></tr></tbody></table>'
        "</td></tr></tbody></table>")


def test_deep_nesting_cut() -> None:
    marked_up = mark_up("<div>" * 500 + "deep" + "</div>" * 500)

    assert "deep" in marked_up
    assert marked_up.count("<div") == 80


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def hostile_content(base: str) -> str:
    return (f'<html><head><link rel="stylesheet" href="{base}/style.css">'
            f"<style>@import url({base}/import.css); body {{ display: none }}</style></head>"
            f'<body style="background: url({base}/body.png)">'
            f'<p style="background: url({base}/p.png)"><img src="{base}/pixel.gif" alt="Logo">'
            f'<a href="https://www.example.com/offer" data-link-id="A">Offer</a></p>'
            "</body></html>")


def test_raw_content_would_connect(listener, caplog) -> None:
    # The check below can see a fetch: WeasyPrint's own fetcher connects for the raw HTML.
    with caplog.at_level(logging.ERROR, logger="weasyprint"):
        HTML(string=hostile_content(f"http://127.0.0.1:{listener.port}")).write_pdf()

    assert listener.connections > 0


def test_marked_up_content_connects_nowhere(listener, caplog) -> None:
    # WeasyPrint's own fetcher, not the report's restricted one: the sanitised page must hold
    # nothing to fetch.
    marked_up = mark_up(hostile_content(f"http://127.0.0.1:{listener.port}"))
    with caplog.at_level(logging.ERROR, logger="weasyprint"):
        pdf = HTML(string=f"<html><body>{marked_up}</body></html>").write_pdf()

    assert pdf.startswith(b"%PDF")
    assert listener.connections == 0
    assert "127.0.0.1" not in marked_up


def pdf_text(path: Path) -> str:
    completed = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True,
                               capture_output=True, text=True)
    return re.sub(r"\s+", " ", completed.stdout)


def test_pdf_shows_badges_and_whole_report(tmp_path: Path, listener) -> None:
    store = build_store(tmp_path, hostile_content(f"http://127.0.0.1:{listener.port}") + CONTENT)

    result = run_nightly(store.as_uri(), tmp_path / "out", TIMEZONE, REPORT_DATE)
    text = pdf_text(result.report_dir / "delivery-h1.pdf")

    assert listener.connections == 0
    # The classification finds every click human (see hot_clicks_rows).
    assert "Offer 60.0 % (3 clicks) human 60.0 % (3)" in text
    assert "Shoes 20.0 % (1 click) human 20.0 % (1)" in text
    assert "Write to us not tracked" in text
    assert "Logo" in text
    # The email's `body { display: none }` hides nothing of the report.
    assert "Hot clicks test" in text
    assert "Data quality" in text


def test_no_content_says_so_in_one_line(tmp_path: Path) -> None:
    catalog = {k: v for k, v in CATALOG.items() if k != "content"}
    store = build_store(tmp_path, catalog=catalog)

    page = compute_pages(store, CLASSES_WITH_SCANNER_SQL)["h1"]

    assert page.html is None
    assert page.problem == ("The catalog entry names no HTML file (key content), so the email "
                            "cannot be shown.")


def test_no_catalog_entry_says_so(tmp_path: Path) -> None:
    page = build_page(open_store(str(tmp_path)), DeliveryCatalog("h2"), {})

    assert page.problem == "No catalog entry for this delivery, so no email HTML to show."


BAD_NAMES = [
    ("dot-dot", "../h1.html"),
    ("absolute", "/etc/h1.html"),
    ("folder", "sub/h1.html"),
    ("crlf-end", "h1.html\r\n"),
    ("newline-end", "h1.html\n"),
    ("crlf-inside", "h1\r\n.html"),
    ("other-extension", "h1.htm"),
    ("not-a-string", 7),
]


@pytest.mark.parametrize("name", [c[1] for c in BAD_NAMES], ids=[c[0] for c in BAD_NAMES])
def test_content_name_rejected(name: object) -> None:
    raw = json.dumps({**CATALOG, "content": name}).encode()

    with pytest.raises(ValueError, match="content must be a file name of 1-64 letters"):
        parse_catalog("h1", raw)


def write_entry(folder: Path, content: bytes | None, name: str = "h1.html") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / "h1.json"
    entry.write_text(json.dumps({**CATALOG, "content": name}), encoding="utf-8")
    if content is not None:
        (folder / name).write_bytes(content)
    return entry


def test_import_copies_content_beside_entry(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    entry = write_entry(tmp_path / "in", CONTENT.encode())

    imported = import_catalog(open_store(str(store_dir)), [str(entry)])

    assert imported == ["h1"]
    stored = store_dir / "catalog" / "deliveries"
    assert (stored / "h1.html").read_text(encoding="utf-8") == CONTENT
    assert json.loads((stored / "h1.json").read_text())["content"] == "h1.html"


def test_import_rejects_path_in_content_name(tmp_path: Path) -> None:
    (tmp_path / "secret.html").write_text("secret", encoding="utf-8")
    entry = write_entry(tmp_path / "in", None, name="../secret.html")
    store_dir = tmp_path / "store"
    store_dir.mkdir()

    with pytest.raises(ValueError, match=r"h1\.json: invalid catalog entry: content must be"):
        import_catalog(open_store(str(store_dir)), [str(entry)])
    assert not (store_dir / "catalog").exists()


def test_import_rejects_missing_content(tmp_path: Path) -> None:
    entry = write_entry(tmp_path / "in", None)
    store_dir = tmp_path / "store"
    store_dir.mkdir()

    with pytest.raises(ValueError, match="content file h1.html of delivery h1 cannot be read"):
        import_catalog(open_store(str(store_dir)), [str(entry)])


TEN_MB = b"<p>" + b"x" * (10 * 1024 * 1024) + b"</p>"


def test_import_rejects_10_mb_content(tmp_path: Path) -> None:
    entry = write_entry(tmp_path / "in", TEN_MB)
    store_dir = tmp_path / "store"
    store_dir.mkdir()

    with pytest.raises(ValueError, match=f"h1.html of delivery h1 is larger than "
                                         f"{MAX_CONTENT_BYTES} bytes"):
        import_catalog(open_store(str(store_dir)), [str(entry)])
    assert not (store_dir / "catalog").exists()


def test_10_mb_content_in_store_not_shown(tmp_path: Path) -> None:
    store = build_store(tmp_path, TEN_MB)

    page = compute_pages(store, CLASSES_WITH_SCANNER_SQL)["h1"]

    assert page.html is None
    assert page.problem == ("The email cannot be shown: content file h1.html of delivery h1 is "
                            f"larger than {MAX_CONTENT_BYTES} bytes; remove inline images "
                            "(data: URIs) from the HTML")


def test_invalid_utf8_names_delivery_and_byte(tmp_path: Path) -> None:
    store = build_store(tmp_path, b"<p>caf\xe9</p>")

    page = compute_pages(store, CLASSES_WITH_SCANNER_SQL)["h1"]

    assert page.problem == ("The email cannot be shown: content file h1.html of delivery h1 "
                            "is not valid UTF-8 at byte 6 (invalid continuation byte); save "
                            "the HTML as UTF-8")


def test_too_many_tags_rejected(tmp_path: Path) -> None:
    store = build_store(tmp_path, "<div>" * 20_001)

    page = compute_pages(store, CLASSES_WITH_SCANNER_SQL)["h1"]

    assert page.problem is not None
    assert "has 20001 tags, more than 20000" in page.problem


def test_cli_import_rejects_crlf_name(tmp_path: Path) -> None:
    entry = write_entry(tmp_path / "in", None, name="h1.html\r\nX-Injected: 1")
    (tmp_path / "store").mkdir()
    config = tmp_path / "clicktrail.toml"
    config.write_text(f'[store]\nurl = "{(tmp_path / "store").as_uri()}"\n', encoding="utf-8")

    result = CliRunner().invoke(report_main, ["import-catalog", "--config", str(config),
                                              str(entry)])

    assert result.exit_code == 1
    assert result.stderr == (f"Error: {entry}: invalid catalog entry: content must be a file "
                             "name of 1-64 letters, digits, '_' or '-' ending in .html, got "
                             "'h1.html\\r\\nX-Injected: 1'\n")
    assert not (tmp_path / "store" / "catalog").exists()


@pytest.mark.parametrize("style", ["height:999cm", "height:999mm", "width:999in",
                                   "padding-top:999pt", "height:300em"])
def test_long_lengths_in_any_unit_removed(style: str) -> None:
    assert filter_style(style) is None


@pytest.mark.parametrize("style", ["height:900px", "width:8.5in", "height:20em", "width:100%"])
def test_page_sized_lengths_kept(style: str) -> None:
    assert filter_style(style) is not None


def test_preview_stops_after_page_budget() -> None:
    # 300 boxes of 900 pixels each would be about 270 pages; each is allowed on its own.
    content = "".join(f'<div style="height:900px">block {i}</div>' for i in range(300))

    html = mark_up(content)

    assert "block 12" in html
    assert "block 13" not in html
    assert "the preview stops after about 12 pages" in html


def test_long_text_preview_stops_after_page_budget() -> None:
    content = "<p>" + "word " * 20_000 + "</p><p>last paragraph</p>"

    html = mark_up(content)

    assert "last paragraph" not in html
    assert html.count("word") == pytest.approx(12 * 3000 / 5, abs=2)
