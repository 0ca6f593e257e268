"""The nightly run over the sample store: published files, HTML and PDF content, escaping."""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

import pytest
from clicktrail.reporter.errors import LockedError, ReporterError, StoreError
from clicktrail.reporter.nightly import LOCK_FILE, report_file_stem, run_nightly
from clicktrail.reporter.render import http_url
from pypdf import PdfReader

from tests.reporter_fixtures import (
    HOSTILE_URL,
    NEWSLETTER_CATALOG,
    SAMPLE_TIMEZONE,
    UNSAFE_DELIVERY_ID,
    build_sample_store,
    event_row,
    write_catalog,
    write_events,
)

# WeasyPrint 70 warns at import when the system library libharfbuzz-subset is missing; its
# fontTools fallback renders the same PDFs.
pytestmark = pytest.mark.filterwarnings(
    "ignore:HarfBuzz-Subset will be required:DeprecationWarning")

REPORT_DATE = date(2026, 12, 3)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("nightly")
    build_sample_store(root / "store")
    result = run_nightly((root / "store").as_uri(), root / "out", SAMPLE_TIMEZONE, REPORT_DATE)
    return result


def pdf_text(path: Path) -> str:
    text = " ".join(page.extract_text() for page in PdfReader(path).pages)
    return re.sub(r"\s+", " ", text)


def test_published_files(published) -> None:
    names = sorted(os.listdir(published.report_dir))
    hashed = report_file_stem(UNSAFE_DELIVERY_ID)

    assert published.report_dir.name == "2026-12-03"
    assert names == sorted(["index.html", "delivery-d1.html", "delivery-d1.pdf",
                            "delivery-d2.html", "delivery-d2.pdf",
                            f"{hashed}.html", f"{hashed}.pdf"])
    assert hashed.startswith("delivery.id-")


def test_no_staging_left_behind(published) -> None:
    leftovers = [name for name in os.listdir(published.report_dir.parent)
                 if name.startswith(".") and name != LOCK_FILE]
    assert leftovers == []


def test_delivery_html_figures(published) -> None:
    html = (published.report_dir / "delivery-d1.html").read_text(encoding="utf-8")

    assert "<h1>December newsletter</h1>" in html
    for expected in ("54.5 %", "83.3 %", "50.0 %", "60.0 %", "16.7 %", "75.0 %",
                     "6 / 11 delivered / processed", "unique clickers / delivered: 3 / 6 and 3 / 6",
                     "https://www.example.com/offer", "not a click"):
        assert expected in html, expected


def test_delivery_html_local_times(published) -> None:
    html = (published.report_dir / "delivery-d1.html").read_text(encoding="utf-8")

    # sent_at 08:00 UTC is 09:00 in Paris; the last counted event is r1's click at 10:00 UTC.
    assert "2026-12-02 09:00 CET" in html
    assert "2026-12-03 11:00 CET" in html


def test_tracking_only_html_says_no_mta(published) -> None:
    html = (published.report_dir / "delivery-d2.html").read_text(encoding="utf-8")

    assert "No MTA data for this delivery" in html
    assert "missing: ids and URLs come from the logs" in html
    assert "https://shop.example.net/a" in html


def test_hostile_url_escaped_not_linked(published) -> None:
    html = (published.report_dir / "delivery-d2.html").read_text(encoding="utf-8")

    assert "<script>bad()" not in html
    assert "&lt;script&gt;bad()&lt;/script&gt;" in html
    assert 'href="javascript:' not in html
    assert '<a href="https://shop.example.net/a">' in html


def test_hostile_delivery_id_escaped(published) -> None:
    index = (published.report_dir / "index.html").read_text(encoding="utf-8")

    assert "../evil<script>" not in index
    assert "../evil&lt;script&gt;" in index
    assert f'href="{report_file_stem(UNSAFE_DELIVERY_ID)}.html"' in index


def test_index_links_every_delivery(published) -> None:
    index = (published.report_dir / "index.html").read_text(encoding="utf-8")

    assert 'href="delivery-d1.html"' in index
    assert 'href="delivery-d1.pdf"' in index
    assert 'href="delivery-d2.pdf"' in index
    assert "December newsletter" in index
    assert "no MTA data" in index


def test_data_quality_box(published) -> None:
    html = (published.report_dir / "delivery-d1.html").read_text(encoding="utf-8")

    assert "Duplicate rows removed" in html
    assert re.search(r'tracking</td><td>access_log</td><td class="num">3<', html)
    assert re.search(r'mta</td><td>postfix</td><td class="num">1<', html)


def test_no_remote_reference_in_html(published) -> None:
    html = (published.report_dir / "delivery-d1.html").read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', html)

    assert sources
    assert all(source.startswith("data:image/svg+xml;base64,") for source in sources)
    assert "@import" not in html


def test_pdf_text(published) -> None:
    text = pdf_text(published.report_dir / "delivery-d1.pdf")

    for expected in ("December newsletter", "Processed 11", "Delivered 6", "83.3 %",
                     "50.0 %", "60.0 %", "Unsubscriptions 1", "Page 1 of"):
        assert expected in text, expected


def test_delivery_html_domain_table(published) -> None:
    html = (published.report_dir / "delivery-d1.html").read_text(encoding="utf-8")
    rows = re.sub(r">\s+<", "><", html)

    assert "<h3>By recipient domain</h3>" in html
    assert ('<td class="text">example.com</td><td class="num">4</td><td class="num">3</td>'
            '<td class="num">1</td><td class="num">25.0 %</td><td class="num">2</td>'
            '<td class="num">2</td>') in rows
    assert '<td class="text">unknown</td><td class="num">1</td>' in rows


def test_delivery_html_diagnostics_table(published) -> None:
    html = (published.report_dir / "delivery-d1.html").read_text(encoding="utf-8")
    rows = re.sub(r">\s+<", "><", html)

    assert "<h3>Top diagnostics</h3>" in html
    assert ("<td>deferred</td><td>soft</td><td>refused</td>"
            '<td class="text mono">451 4.7.1 &lt;*@*&gt;: greylisted, try again later</td>'
            '<td class="num">3</td>') in rows
    assert "delivery temporarily suspended: connect to mx.example.net" in html


def test_pdf_text_domain_and_diagnostic_rows(published) -> None:
    text = pdf_text(published.report_dir / "delivery-d1.pdf")

    for expected in ("By recipient domain", "example.com 4 3 1 25.0 % 2 2",
                     "example.net 3 1 1 33.3 % 1 0", "unknown 1 0 0 0.0 % 0 0",
                     "Top diagnostics", "550 5.1.1 <*@*>: user unknown 1"):
        assert expected in text, expected


def test_tracking_only_html_has_no_domain_table(published) -> None:
    html = (published.report_dir / "delivery-d2.html").read_text(encoding="utf-8")

    assert "By recipient domain" not in html
    assert "Top diagnostics" not in html


def test_hostile_domain_and_diagnostic_escaped(tmp_path: Path) -> None:
    long_diagnostic = "550 5.7.1 " + "x" * 20000
    write_events(tmp_path / "store", [
        event_row(event_type="bounced", event_time="2026-12-03T08:00:00Z", delivery_id="dh",
                  recipient_id="r1", recipient_domain="<b>bold</b>.example", bounce_type="hard",
                  bounce_reason="refused", diagnostic_group="<script>alert('dsn')</script>"),
        event_row(event_type="bounced", event_time="2026-12-03T08:00:00Z", delivery_id="dh",
                  recipient_id="r2", recipient_domain="example.com", bounce_type="hard",
                  bounce_reason="refused", diagnostic=long_diagnostic),
    ], file_stem="mx1-mta-0")

    result = run_nightly(str(tmp_path / "store"), tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE)
    html = (result.report_dir / "delivery-dh.html").read_text(encoding="utf-8")

    assert "<b>bold</b>" not in html
    assert "&lt;b&gt;bold&lt;/b&gt;.example" in html
    assert "<script>alert(" not in html
    assert "&lt;script&gt;alert(&#39;dsn&#39;)&lt;/script&gt;" in html
    # The diagnostic column shows at most 200 characters, the last one an ellipsis.
    assert long_diagnostic[:199] + "\u2026</td>" in html
    assert long_diagnostic[:200] not in html


def test_pdf_text_hostile_url(published) -> None:
    text = pdf_text(published.report_dir / "delivery-d2.pdf")

    assert "Delivery d2" in text
    assert "No MTA data" in text
    assert "javascript:alert" in text


def test_rerun_replaces_outputs(tmp_path: Path) -> None:
    store = tmp_path / "store"
    build_sample_store(store)
    first = run_nightly(str(store), tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE)
    (first.report_dir / "stale.txt").write_text("from an older run", encoding="utf-8")

    # A new delivery appears; the rerun must publish it and drop files of the old set.
    write_events(store, [event_row(event_type="open", event_time="2026-12-03T12:00:00Z",
                                   delivery_id="d4", recipient_id="r1", http_method="GET")],
                 file_stem="mx3-tracking-0")
    second = run_nightly(str(store), tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE)

    assert second.report_dir == first.report_dir
    assert (second.report_dir / "delivery-d4.pdf").is_file()
    assert not (second.report_dir / "stale.txt").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK_FILE, "2026-12-03"]


def test_empty_store_gives_empty_index(tmp_path: Path) -> None:
    (tmp_path / "store" / "events").mkdir(parents=True)

    result = run_nightly(str(tmp_path / "store"), tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE)

    assert result.reports == []
    assert "No delivery had an event in this period." in result.index_path.read_text("utf-8")


def test_missing_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="store not found: .*is not a directory"):
        run_nightly(str(tmp_path / "nowhere"), tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE)


def test_store_without_events_error(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()

    with pytest.raises(StoreError, match="has no events/ folder"):
        run_nightly(str(tmp_path / "store"), tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE)


def test_unknown_timezone_error(tmp_path: Path) -> None:
    with pytest.raises(ReporterError, match="unknown time zone 'Mars/Olympus'"):
        run_nightly(str(tmp_path), tmp_path / "out", "Mars/Olympus", REPORT_DATE)


def test_overlapping_run_rejected(tmp_path: Path) -> None:
    import fcntl

    (tmp_path / "store" / "events").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / LOCK_FILE, "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LockedError, match="another nightly run is using .*is locked"):
            run_nightly(str(tmp_path / "store"), tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE)


HTTP_URL_CASES = [
    ("https", "https://www.example.com/a?b=1", "https://www.example.com/a?b=1"),
    ("http-upper", "HTTP://example.com/", "HTTP://example.com/"),
    ("javascript", "javascript:alert(1)", None),
    ("data", "data:text/html,<b>x</b>", None),
    ("relative", "/r/?id=h1,2,3", None),
    ("no-host", "https:///path", None),
    ("empty", "", None),
    ("bad-ipv6", "http://[::1/", None),
]


@pytest.mark.parametrize(("url", "expected"), [c[1:] for c in HTTP_URL_CASES],
                         ids=[c[0] for c in HTTP_URL_CASES])
def test_http_url_filter(url: str, expected: str | None) -> None:
    assert http_url(url) == expected


def test_hostile_url_constant_is_hostile() -> None:
    # Guards the fixture: the escaping tests above mean nothing if the URL is harmless.
    assert "<script>" in HOSTILE_URL


def test_long_url_is_shortened_in_report():
    from clicktrail.reporter.render import MAX_SHOWN_CHARS, shorten

    url = "https://e.example/?q=" + "a" * 20000

    shown = shorten(url)

    assert len(shown) == MAX_SHOWN_CHARS
    assert shown.endswith("\u2026")
    assert shorten("https://e.example/") == "https://e.example/"


@pytest.mark.parametrize("delivery_id", ["d1\n", "d1\r\n", "../d1", "d1/..", ""])
def test_file_stem_of_unsafe_ids_is_hashed(delivery_id) -> None:
    stem = report_file_stem(delivery_id)

    assert stem.startswith("delivery.id-")
    assert "\n" not in stem
    assert "/" not in stem


def test_text_only_messages_not_below_delivered_is_flagged(tmp_path: Path) -> None:
    build_sample_store(tmp_path / "store")
    write_catalog(tmp_path / "store", {**NEWSLETTER_CATALOG, "text_only_messages": 6})

    result = run_nightly(str(tmp_path / "store"), tmp_path / "out", SAMPLE_TIMEZONE, REPORT_DATE)

    html = (result.report_dir / "delivery-d1.html").read_text(encoding="utf-8")
    assert "The catalog gives 6 text-only messages, not fewer than the\n    6 delivered" in html
    d1 = next(report for report in result.reports if report.delivery_id == "d1")
    assert d1.metrics.raw.estimated_opens == 0
