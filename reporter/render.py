"""Render the reports: Jinja2 templates to HTML, and HTML to PDF with WeasyPrint.

Every value from a log is untrusted. Autoescaping is on for every template, and URLs are shown
as text and linked only when they are http or https. WeasyPrint may load only data: URIs and
files from the installed templates package, so rendering never touches the network.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import jinja2
from markupsafe import Markup

log = logging.getLogger(__name__)

TEMPLATES_PACKAGE = "clicktrail.templates"
STYLESHEET = "report.css"


def make_environment() -> jinja2.Environment:
    """Create the Jinja2 environment over the installed templates, with autoescaping on."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(TEMPLATES_PACKAGE, ""),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["number"] = format_number
    env.filters["http_url"] = http_url
    env.filters["shorten"] = shorten
    env.filters["local_time"] = format_local_time
    env.globals["stylesheet"] = Markup(_read_stylesheet())
    return env


def render_html(env: jinja2.Environment, template: str, context: dict[str, Any]) -> str:
    return env.get_template(template).render(**context)


def write_pdf(html: str, target: Path) -> None:
    """Render the HTML to a PDF file with WeasyPrint, fetching only local assets."""
    # Imported here so that commands that render no PDF skip WeasyPrint's import, which took
    # 0.7 s on a 2-core build machine.
    import weasyprint

    assets_dir = Path(str(resources.files(TEMPLATES_PACKAGE)))
    document = weasyprint.HTML(
        string=html,
        base_url=assets_dir.as_uri() + "/",
        url_fetcher=make_url_fetcher(assets_dir),
    )
    document.write_pdf(target)


def make_url_fetcher(assets_dir: Path) -> Any:
    """Create a WeasyPrint URL fetcher that loads data: URIs and files under assets_dir only.

    Any other URL raises ValueError, which WeasyPrint logs as a warning and skips.
    """
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    allowed_dir = assets_dir.resolve()

    class LocalAssetFetcher(URLFetcher):
        def fetch(self, url: str, headers: dict | None = None) -> URLFetcherResponse:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            if scheme == "file":
                # urllib opens the percent-decoded path, so check that one.
                path = Path(unquote(parts.path)).resolve()
                if parts.netloc not in ("", "localhost") or not path.is_relative_to(allowed_dir):
                    raise ValueError(f"rejected file URL outside the template assets: {url}")
            elif scheme != "data":
                raise ValueError(f"rejected non-local URL: {url[:200]}")
            return super().fetch(url, headers)

    return LocalAssetFetcher(allowed_protocols=("data", "file"), fail_on_errors=False)


def format_number(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,}".replace(",", "\u202f")


# Longest text of one URL or label a report shows. Any visitor of the tracking server chooses
# the URLs it logs, and WeasyPrint's time to break one unbreakable string into lines grows with
# its square: a few thousand characters take seconds, tens of thousands take minutes.
MAX_SHOWN_CHARS = 300


# Control characters, and the Unicode controls that reorder text: U+202E makes "gnp.exe" read
# as "exe.png". Text from logs and catalogs shows them as U+FFFD.
UNSHOWN_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f"
                                "\u202a-\u202e\u2066-\u2069]")


def shorten(value: str | None, limit: int = MAX_SHOWN_CHARS) -> str | None:
    """Cut a string from a log or catalog to limit characters, marking the cut with an ellipsis.

    Control and text-direction characters become U+FFFD, so what is shown is what is stored.
    """
    if value is None:
        return value
    value = UNSHOWN_CHARACTERS.sub("\ufffd", value)
    if len(value) <= limit:
        return value
    return value[: limit - 1] + "\u2026"


def http_url(value: str | None) -> str | None:
    """Return the URL when it is an absolute http or https URL, else None (show it as text)."""
    if not value:
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return value
    return None


def format_local_time(value: datetime | int | None, zone: ZoneInfo,
                      pattern: str = "%Y-%m-%d %H:%M %Z") -> str:
    """Format a UTC datetime or microseconds since the epoch in the report time zone."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        value = datetime.fromtimestamp(value / 1_000_000, UTC)
    return value.astimezone(zone).strftime(pattern)


def _read_stylesheet() -> str:
    return resources.files(TEMPLATES_PACKAGE).joinpath(STYLESHEET).read_text(encoding="utf-8")
