"""Print layout of the delivery report: table of contents, page numbers, running header."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from clicktrail.reporter.nightly import run_nightly
from pypdf import PdfReader

from .test_reporter_clients import (
    CLIENT_REPORT_DATE,
    CLIENT_TIMEZONE,
    build_client_store,
)

# WeasyPrint 70 warns at import when the system library libharfbuzz-subset is missing; its
# fontTools fallback renders the same PDFs.
pytestmark = pytest.mark.filterwarnings(
    "ignore:HarfBuzz-Subset will be required:DeprecationWarning")

RUNNING_HEADER = "Client test delivery · report of 2026-12-03"
TOC_TITLES = ["Summary", "Delivery", "Opens, clicks and unsubscriptions", "Clicks per link",
              "Hot clicks", "Opens and clicks over time", "Mail clients and devices",
              "Data quality"]
# The text that marks each section in the PDF: its heading, except for the summary tiles.
SECTION_MARKS = {"Summary": "Click-through rate"}


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("print")
    build_client_store(root / "store")
    return run_nightly(str(root / "store"), root / "out", CLIENT_TIMEZONE, CLIENT_REPORT_DATE)


def pdftotext_pages(path: Path, layout: bool = True) -> list[str]:
    """Extract the text of each page with poppler's pdftotext, whitespace collapsed.

    The layout mode keeps each table-of-contents title on the line of its page number. Without
    it, a table cell that wraps stays in one piece.
    """
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    pages = []
    for number in range(1, len(PdfReader(path).pages) + 1):
        mode = ["-layout"] if layout else []
        output = subprocess.run(["pdftotext", *mode, "-f", str(number), "-l", str(number),
                                 str(path), "-"],
                                check=True, capture_output=True, text=True, timeout=60)
        pages.append(re.sub(r"\s+", " ", output.stdout).strip())
    return pages


def toc_page_numbers(first_page: str) -> dict[str, int]:
    """Read the table of contents: each title followed by its page number."""
    contents = first_page.split("Contents", 1)[1]
    numbers = {}
    for title in TOC_TITLES:
        match = re.search(re.escape(title) + r" (\d+)\b", contents)
        if match:
            numbers[title] = int(match.group(1))
    return numbers


def test_toc_lists_every_section(published) -> None:
    pages = pdftotext_pages(published.report_dir / "delivery-dc.pdf")

    assert list(toc_page_numbers(pages[0])) == TOC_TITLES


def test_toc_page_numbers_match_pages(published) -> None:
    pages = pdftotext_pages(published.report_dir / "delivery-dc.pdf")
    numbers = toc_page_numbers(pages[0])
    # The first page without its masthead and table of contents.
    pages[0] = pages[0].split("Contents", 1)[1].rsplit("Data quality", 1)[1]

    for title, page_number in numbers.items():
        mark = SECTION_MARKS.get(title, title)
        first_page = next(number for number, text in enumerate(pages, start=1) if mark in text)
        assert first_page == page_number, title


def test_toc_page_numbers_increase(published) -> None:
    pages = pdftotext_pages(published.report_dir / "delivery-dc.pdf")
    numbers = list(toc_page_numbers(pages[0]).values())

    assert numbers == sorted(numbers)
    assert numbers[0] == 1
    assert numbers[-1] == len(pages)


def test_footer_page_numbers(published) -> None:
    pages = pdftotext_pages(published.report_dir / "delivery-dc.pdf")

    assert len(pages) > 1
    for number, text in enumerate(pages, start=1):
        assert text.endswith(f"Page {number} of {len(pages)}"), text[-80:]


def test_running_header_after_first_page(published) -> None:
    pages = pdftotext_pages(published.report_dir / "delivery-dc.pdf")

    assert not pages[0].startswith(RUNNING_HEADER)
    for text in pages[1:]:
        assert text.startswith(RUNNING_HEADER), text[:80]


def test_clients_section_in_pdf(published) -> None:
    pages = pdftotext_pages(published.report_dir / "delivery-dc.pdf", layout=False)
    text = " ".join(pages)

    # The nightly run's classification rules, not the tests' classes, decide the human columns,
    # so only the raw columns are checked here.
    for expected in ("By mail client", "Apple Mail Privacy Protection 2 2 ", "Outlook 2 1 ",
                     "Webmail or browser 0 0 0 0 3 2 ", "By device type", "Image proxy 3 3 "):
        assert expected in text, expected


def test_toc_links_resolve_in_html(published) -> None:
    html = (published.report_dir / "delivery-dc.html").read_text(encoding="utf-8")
    toc = html.split('<nav class="toc"', 1)[1].split("</nav>", 1)[0]
    targets = re.findall(r'href="#([^"]+)"', toc)

    assert len(targets) == len(TOC_TITLES)
    for target in targets:
        assert html.count(f'id="{target}"') == 1, target


def test_delivery_without_hits_has_no_clients_entry(published) -> None:
    html = (published.report_dir / "delivery-dm.html").read_text(encoding="utf-8")
    toc = html.split('<nav class="toc"', 1)[1].split("</nav>", 1)[0]

    assert "Mail clients and devices" not in toc
    assert 'id="clients"' not in html
    assert "Data quality" in toc


def test_generation_note_on_last_page_only(published) -> None:
    pages = pdftotext_pages(published.report_dir / "delivery-dc.pdf")

    assert "Generated by clicktrail on" in pages[-1]
    for text in pages[:-1]:
        assert "Generated by clicktrail" not in text
