"""The hot clicks section: the email's HTML from the catalog, each tracked link marked with its clicks.

The HTML is written by the sender and treated as hostile. It goes through three steps:

1. nh3 (the Ammonia sanitiser) keeps layout tags and attributes only. It removes scripts,
   style blocks, event handlers, iframes, forms, meta and link elements. An `href` keeps http,
   https and mailto URLs only, and images lose their `src`. A style attribute keeps the layout
   properties of STYLE_PROPERTIES whose values contain no url(), escape or negative length.
2. EmailRewriter walks nh3's output. It replaces each image by a box with its alt text and
   each link by a span followed by its badge. Links stop being links, because their targets
   are tracking URLs and a reader who followed one from the report would add a click.
3. nh3 runs again over the result with no `a` or `img` allowed, so the page contains no URL
   that WeasyPrint or a browser could fetch.

The email's own <style> blocks are dropped, not scoped. Their selectors would apply to the
whole report (`body {display: none}` hides it), and scoping them would mean rewriting every
selector, @media and @import rule. Campaign HTML carries its layout in table attributes and
inline styles, which are kept, so the page loses the class-based styling only.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urlsplit, urlunsplit

import nh3
from markupsafe import Markup

from .catalog import (
    LINK_TYPES_NOT_CLICKS,
    CatalogLink,
    ContentError,
    DeliveryCatalog,
    load_content,
)
from .errors import StoreError
from .metrics import Rate
from .sections import SectionInput
from .store import Store

log = logging.getLogger(__name__)

# Clicks per catalog link, raw and human-only, with the figure definitions of metrics.py:
# a click is a hit on a link that the catalog does not type as unsubscribe or mirror.
LINK_CLICKS_BY_CLASS_SQL = """
SELECT f.delivery_id, f.link_id,
       count(*) AS clicks,
       count(*) FILTER (f.human_hit) AS human_clicks
FROM figure_events AS f
WHERE f.figure = 'click'
GROUP BY ALL
"""

LAYOUT_TAGS = frozenset({
    "a", "abbr", "b", "big", "blockquote", "br", "caption", "center", "cite", "code", "col",
    "colgroup", "dd", "del", "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "ins", "li", "ol", "p", "pre", "s", "small", "span", "strike",
    "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "u",
    "ul",
})
# Removed with their content, not only their tags: the text inside is code or metadata.
DROPPED_WITH_CONTENT = frozenset({
    "script", "style", "title", "noscript", "template", "iframe", "object", "svg", "math",
    "textarea", "select",
})
ATTRIBUTES = {
    "*": {"align", "valign", "bgcolor", "dir", "lang", "title", "style", "width", "height"},
    "table": {"border", "cellpadding", "cellspacing"},
    "td": {"colspan", "rowspan", "nowrap"},
    "th": {"colspan", "rowspan", "nowrap"},
    "col": {"span"},
    "colgroup": {"span"},
    "font": {"color", "face", "size"},
    "ol": {"start", "type"},
    "ul": {"type"},
    "a": {"href", "data-link-id"},
    "img": {"alt"},
}
URL_SCHEMES = {"http", "https", "mailto"}

# Properties that lay out or colour a box. position, float, transform, z-index, content and
# background are left out: they move boxes over the report or load images.
STYLE_PROPERTIES = frozenset({
    "background-color", "border", "border-bottom", "border-collapse", "border-color",
    "border-left", "border-radius", "border-right", "border-spacing", "border-style",
    "border-top", "border-width", "color", "display", "font-family", "font-size", "font-style",
    "font-weight", "height", "letter-spacing", "line-height", "margin", "margin-bottom",
    "margin-left", "margin-right", "margin-top", "max-height", "max-width", "min-height",
    "min-width", "overflow", "padding", "padding-bottom", "padding-left", "padding-right",
    "padding-top", "table-layout", "text-align", "text-decoration", "text-transform",
    "vertical-align", "visibility", "white-space", "width", "word-break",
})
# Words, numbers with units, colours, quoted font names and colour functions. No backslash (CSS
# escapes could spell url), no colon, semicolon, braces, at sign or asterisk.
STYLE_VALUE = re.compile(r"[\w\s#%.,/'\"()+-]*")
STYLE_FUNCTION = re.compile(r"([A-Za-z-]+)\s*\(")
COLOUR_FUNCTIONS = frozenset({"rgb", "rgba", "hsl", "hsla"})
NEGATIVE_NUMBER = re.compile(r"-\s*[\d.]")
NUMBER = re.compile(r"(?<![#\w.])(\d+(?:\.\d+)?)([A-Za-z%]*)")
# CSS pixels per unit (CSS Values 3: 1in = 96px = 2.54cm = 72pt). Font-relative and viewport
# units are taken at a 16px font and an A4 page of about 1100px, so each unit is bounded too.
PIXELS_PER_UNIT = {
    "": 1.0, "px": 1.0, "%": 1.0, "pt": 96 / 72, "pc": 16.0, "in": 96.0, "cm": 96 / 2.54,
    "mm": 96 / 25.4, "q": 96 / 101.6, "em": 16.0, "rem": 16.0, "ex": 8.0, "ch": 8.0,
    "vw": 8.0, "vh": 11.0, "vmin": 8.0, "vmax": 11.0,
}
# Largest layout length in CSS pixels (a unitless number counts as pixels): email layouts are at
# most about 800 pixels wide, and a box thousands of pixels high would add blank PDF pages.
MAX_LAYOUT_NUMBER = 1000
MAX_SPAN = 100
LAYOUT_NUMBER = re.compile(r"\d{1,4}%?")
COLOUR = re.compile(r"#?[A-Za-z0-9]{1,20}")
FONT_FACE = re.compile(r"[\w\s,'\"-]{1,200}")

# WeasyPrint lays out nested boxes recursively: 200 nested table elements exceeded Python's
# recursion limit in WeasyPrint 70, 120 did not. The report adds a few levels around the email.
MAX_DEPTH = 80
# The preview stops after about this many PDF pages of the email. Pages are estimated from the
# text (CHARS_PER_PAGE) and from the lengths that styles and attributes give (PIXELS_PER_PAGE),
# so that neither a long text nor many tall boxes can make a report thousands of pages long.
MAX_PREVIEW_PAGES = 12
# Rows of the table of tracked links that the email does not show (a cut preview leaves many).
MAX_MISSING_ROWS = 50
CHARS_PER_PAGE = 3000
PIXELS_PER_PAGE = 1000
VERTICAL_PROPERTIES = frozenset({
    "height", "min-height", "line-height", "font-size", "margin", "margin-top", "margin-bottom",
    "padding", "padding-top", "padding-bottom",
})
MAX_ALT_CHARS = 200
VOID_TAGS = frozenset({"br", "col", "hr", "img", "wbr"})
BADGE_CLASSES = {"hc-link", "hc-image", "hc-badge", "hc-untracked", "hc-share", "hc-human"}


@dataclass(frozen=True)
class LinkClicks:
    """Clicks on one tracked link of the email, or on several catalog links with one URL."""

    link_ids: tuple[str, ...]
    clicks: int
    human_clicks: int
    share: Rate
    human_share: Rate


@dataclass(frozen=True)
class HotClicksPage:
    """The section's context: the marked-up email, or why it cannot be shown."""

    html: Markup | None = None
    problem: str | None = None
    clicks: int = 0
    human_clicks: int = 0
    # Links of the email drawn with a badge, and those matching no catalog link.
    tracked: int = 0
    untracked: int = 0
    # Counted catalog links that no link of the HTML matched, with their clicks: the
    # MAX_MISSING_ROWS with the most clicks, and how many more there are.
    missing: list[tuple[CatalogLink, LinkClicks]] = field(default_factory=list)
    more_missing: int = 0


def compute_hot_clicks(section_input: SectionInput) -> dict[str, HotClicksPage]:
    """Build the hot clicks page of every active delivery."""
    counts: dict[str, dict[str | None, tuple[int, int]]] = {}
    for delivery_id, link_id, clicks, human_clicks in section_input.con.execute(
            LINK_CLICKS_BY_CLASS_SQL).fetchall():
        counts.setdefault(delivery_id, {})[link_id] = (clicks, human_clicks)

    return {delivery_id: build_page(section_input.store, catalog, counts.get(delivery_id, {}))
            for delivery_id, catalog in section_input.catalogs.items()}


def build_page(store: Store, catalog: DeliveryCatalog,
               counts: dict[str | None, tuple[int, int]]) -> HotClicksPage:
    """Load, sanitise and mark up one delivery's email; counts maps link ids to clicks."""
    if catalog.problem is not None:
        return HotClicksPage(problem="The catalog entry is unusable (see Data quality), so the "
                                     "email cannot be shown.")
    if not catalog.found:
        return HotClicksPage(problem="No catalog entry for this delivery, so no email HTML "
                                     "to show.")
    if catalog.content is None:
        return HotClicksPage(problem="The catalog entry names no HTML file (key content), so "
                                     "the email cannot be shown.")

    try:
        content = load_content(store, catalog)
    except (ContentError, StoreError) as exc:
        log.warning("hot clicks of delivery %s not shown: %s", catalog.delivery_id, exc)
        return HotClicksPage(problem=f"The email cannot be shown: {exc}")

    matcher = LinkMatcher(catalog, counts)
    marked_up = mark_up_email(content or "", matcher)
    missing = sorted(matcher.missing(), key=lambda item: -item[1].clicks)
    return HotClicksPage(
        html=marked_up,
        clicks=matcher.total_clicks,
        human_clicks=matcher.total_human_clicks,
        tracked=matcher.tracked,
        untracked=matcher.untracked,
        missing=missing[:MAX_MISSING_ROWS],
        more_missing=max(len(missing) - MAX_MISSING_ROWS, 0),
    )


def normalise_url(url: str) -> str:
    """Lower-case the scheme and host and drop trailing slashes of the path, for matching."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{hostport.lower()}" if userinfo else hostport.lower()
    return urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), parts.query,
                       parts.fragment))


class LinkMatcher:
    """Match the email's links to catalog links and make their badges."""

    def __init__(self, catalog: DeliveryCatalog,
                 counts: dict[str | None, tuple[int, int]]) -> None:
        self.catalog = catalog
        self.counts = counts
        self.total_clicks = sum(clicks for clicks, _ in counts.values())
        self.total_human_clicks = sum(human for _, human in counts.values())
        self.by_url: dict[str, list[CatalogLink]] = {}
        for link in catalog.links.values():
            if link.url:
                self.by_url.setdefault(normalise_url(link.url), []).append(link)
        self.tracked = 0
        self.untracked = 0
        self.drawn: set[str] = set()

    def badge(self, link_id: str | None, href: str | None) -> str:
        """Return the badge HTML for a link of the email: clicks, "not tracked" or nothing."""
        # data-link-id names the catalog link exactly; the URL is the fallback.
        if link_id is not None:
            matched = [self.catalog.links[link_id]] if link_id in self.catalog.links else []
        elif href is not None:
            matched = self.by_url.get(normalise_url(href), [])
        else:
            return ""

        if not matched:
            self.untracked += 1
            return '<span class="hc-badge hc-untracked">not tracked</span>'
        counted = [link for link in matched if link.type not in LINK_TYPES_NOT_CLICKS]
        if not counted:
            return ""

        self.tracked += 1
        self.drawn.update(link.link_id for link in counted)
        return badge_html(self.clicks_of(counted))

    def clicks_of(self, links: list[CatalogLink]) -> LinkClicks:
        clicks = sum(self.counts.get(link.link_id, (0, 0))[0] for link in links)
        human = sum(self.counts.get(link.link_id, (0, 0))[1] for link in links)
        return LinkClicks(
            link_ids=tuple(link.link_id for link in links),
            clicks=clicks,
            human_clicks=human,
            share=Rate(clicks, self.total_clicks),
            human_share=Rate(human, self.total_human_clicks),
        )

    def missing(self) -> list[tuple[CatalogLink, LinkClicks]]:
        return [(link, self.clicks_of([link])) for link in self.catalog.links.values()
                if link.type not in LINK_TYPES_NOT_CLICKS and link.link_id not in self.drawn]


def badge_html(link: LinkClicks) -> str:
    clicks = "1 click" if link.clicks == 1 else f"{link.clicks} clicks"
    return (f'<span class="hc-badge"><span class="hc-share">{link.share.percent()}</span> '
            f'({clicks}) <span class="hc-human">human {link.human_share.percent()} '
            f'({link.human_clicks})</span></span>')


def mark_up_email(content: str, matcher: LinkMatcher) -> Markup:
    """Sanitise the email's HTML and put a badge after each link; the result is safe HTML."""
    cleaned = nh3.clean(content, tags=set(LAYOUT_TAGS), clean_content_tags=set(DROPPED_WITH_CONTENT),
                        attributes={tag: set(names) for tag, names in ATTRIBUTES.items()},
                        attribute_filter=filter_attribute, url_schemes=set(URL_SCHEMES),
                        strip_comments=True, link_rel=None)

    rewriter = EmailRewriter(matcher)
    rewriter.feed(cleaned)
    rewriter.close()
    if rewriter.truncated:
        log.info("hot clicks preview cut after about %d pages", MAX_PREVIEW_PAGES)

    # The second pass allows no a and img, so no URL can reach the page whatever the rewriter
    # let through. The only classes it allows are the page's own.
    final = nh3.clean("".join(rewriter.output), tags=set(LAYOUT_TAGS - {"a", "img"}),
                      clean_content_tags=set(DROPPED_WITH_CONTENT),
                      attributes={tag: set(names) for tag, names in ATTRIBUTES.items()
                                  if tag not in ("a", "img")},
                      attribute_filter=filter_attribute, allowed_classes={"span": BADGE_CLASSES},
                      url_schemes=set(URL_SCHEMES), strip_comments=True, link_rel=None)
    if rewriter.truncated:
        final += (f'<p class="hc-cut">The rest of the email is not shown: the preview stops after '
                  f'about {MAX_PREVIEW_PAGES} pages.</p>')
    return Markup(final)


def filter_attribute(tag: str, name: str, value: str) -> str | None:
    """Keep an allowed attribute's value only when it cannot load anything or break the page."""
    if name == "style":
        return filter_style(value)
    if name in ("width", "height", "cellpadding", "cellspacing", "border"):
        return value if _layout_number(value, MAX_LAYOUT_NUMBER) else None
    if name in ("colspan", "rowspan", "span"):
        return value if _layout_number(value, MAX_SPAN) else None
    if name in ("bgcolor", "color"):
        return value if COLOUR.fullmatch(value.strip()) else None
    if name == "face":
        return value if FONT_FACE.fullmatch(value) else None
    return value


def filter_style(value: str) -> str | None:
    """Keep the declarations of a style attribute that lay out or colour a box safely."""
    declarations = []
    for declaration in value.split(";"):
        name, colon, declared = declaration.partition(":")
        name = name.strip().lower()
        declared = re.sub(r"!\s*important\s*$", "", declared.strip(), flags=re.IGNORECASE)
        if colon and name in STYLE_PROPERTIES and _safe_style_value(declared.strip()):
            declarations.append(f"{name}: {declared.strip()}")
    return "; ".join(declarations) or None


def _safe_style_value(value: str) -> bool:
    if not value or not STYLE_VALUE.fullmatch(value):
        return False
    if any(function.lower() not in COLOUR_FUNCTIONS for function in STYLE_FUNCTION.findall(value)):
        return False
    if NEGATIVE_NUMBER.search(value):
        return False
    for number, unit in NUMBER.findall(value):
        per_unit = PIXELS_PER_UNIT.get(unit.lower())
        if per_unit is None or float(number) * per_unit > MAX_LAYOUT_NUMBER:
            return False
    return True


def _layout_number(value: str, limit: int) -> bool:
    value = value.strip()
    return bool(LAYOUT_NUMBER.fullmatch(value)) and int(value.rstrip("%")) <= limit


class EmailRewriter(HTMLParser):
    """Rewrite nh3's output: images become boxes, links become spans with badges.

    nh3 serialises a well-formed tree, so every end tag closes the element on top of the stack.
    Elements deeper than MAX_DEPTH lose their tags but keep their text.
    """

    def __init__(self, matcher: LinkMatcher) -> None:
        super().__init__(convert_charrefs=True)
        self.matcher = matcher
        self.output: list[str] = []
        # (tag, the text that closes it; "" when the start tag was dropped)
        self.stack: list[tuple[str, str]] = []
        # cellpadding of each open table, which its cells take as padding
        self.paddings: list[str | None] = []
        # The alignment each open element passes to its content, one entry per stack entry
        self.aligns: list[str] = []
        # Estimated PDF pages of the output so far; past MAX_PREVIEW_PAGES the rest is dropped
        # (the final nh3 pass closes the elements left open).
        self.pages = 0.0
        self.truncated = False

    def _spend(self, pages: float) -> bool:
        """Add to the page estimate; return False once the preview is full."""
        self.pages += pages
        if self.pages > MAX_PREVIEW_PAGES:
            self.truncated = True
        return not self.truncated

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value for name, value in attrs if value is not None}
        if self.truncated or not self._spend(_largest_length(values) / PIXELS_PER_PAGE):
            return
        if tag == "img":
            self.output.append(image_box(values))
            return
        if tag in VOID_TAGS:
            self.output.append(f"<{tag}{_attributes(values)}>")
            return
        parent_align = self.aligns[-1] if self.aligns else ""
        own_align = "center" if tag == "center" else values.get("align", "").lower()
        if len(self.stack) >= MAX_DEPTH:
            self.stack.append((tag, ""))
            self.aligns.append(own_align or parent_align)
            return

        self.aligns.append(own_align or parent_align)
        values = with_layout_style(tag, values, self.cell_padding(), parent_align)
        if tag == "a":
            # An anchor whose href the sanitiser removed (javascript:, data:) is no link.
            is_link = "href" in values or "data-link-id" in values
            badge = self.matcher.badge(values.get("data-link-id"), values.get("href"))
            link_class = {"class": "hc-link"} if is_link else {}
            style = {"style": values["style"]} if "style" in values else {}
            self.output.append(f"<span{_attributes(link_class | style)}>")
            self.stack.append((tag, "</span>" + badge))
        else:
            self.output.append(f"<{tag}{_attributes(values)}>")
            self.stack.append((tag, f"</{tag}>"))
        if tag == "table":
            self.paddings.append(values.get("cellpadding"))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS or not self.stack or self.stack[-1][0] != tag:
            return
        _, closing = self.stack.pop()
        self.aligns.pop()
        self.output.append(closing)
        if tag == "table" and closing:
            self.paddings.pop()

    def cell_padding(self) -> str | None:
        return self.paddings[-1] if self.paddings else None

    def handle_data(self, data: str) -> None:
        if self.truncated:
            return
        room = max(int((MAX_PREVIEW_PAGES - self.pages) * CHARS_PER_PAGE), 0)
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        self.pages += len(data) / CHARS_PER_PAGE
        self.output.append(html.escape(data, quote=False))


def _largest_length(values: dict[str, str]) -> float:
    """Return the largest vertical length, in CSS pixels, that an element's style or height gives.

    Widths do not count: a wide element adds no page.
    """
    texts = [values.get("height", "")]
    for declaration in values.get("style", "").split(";"):
        name, _, declared = declaration.partition(":")
        if name.strip().lower() in VERTICAL_PROPERTIES:
            texts.append(declared)
    largest = 0.0
    for text in texts:
        for number, unit in NUMBER.findall(text):
            largest = max(largest, float(number) * PIXELS_PER_UNIT.get(unit.lower(), 1.0))
    return largest


# HTML font sizes 1-7 in CSS keywords, as browsers map them.
FONT_SIZES = {"1": "x-small", "2": "small", "3": "medium", "4": "large", "5": "x-large",
              "6": "xx-large", "7": "xx-large"}


def with_layout_style(tag: str, values: dict[str, str], cell_padding: str | None,
                      parent_align: str = "") -> dict[str, str]:
    """Add the layout of presentational attributes (width, bgcolor, align...) to the style.

    Browsers apply these attributes, but WeasyPrint ignores them unless the whole report is
    rendered with presentational hints, and campaign HTML lays out its tables with them. The
    element's own style comes last, so it wins as it does in a browser. parent_align is the
    alignment set by an enclosing element, which browsers also apply to a nested table:
    `<td align="center"><table width="600">` centres the table.
    """
    hints = []
    for name in ("width", "height"):
        if name in values:
            size = values[name]
            hints.append(f"{name}: {size if size.endswith('%') else size + 'px'}")
    if "bgcolor" in values:
        hints.append(f"background-color: {values['bgcolor']}")
    if "valign" in values:
        hints.append(f"vertical-align: {values['valign'].lower()}")

    align = values.get("align", "").lower()
    if tag == "table" and (align or parent_align) == "center":
        hints.append("margin-left: auto; margin-right: auto")
    elif align in ("left", "right", "center", "justify") and tag != "table":
        hints.append(f"text-align: {align}")

    if tag == "table":
        if "cellspacing" in values:
            hints.append(f"border-spacing: {values['cellspacing'].rstrip('%')}px")
        if values.get("border", "0") not in ("0", "0%"):
            hints.append(f"border: {values['border'].rstrip('%')}px solid #999999")
    if tag in ("td", "th") and cell_padding is not None:
        hints.append(f"padding: {cell_padding.rstrip('%')}px")
    if tag == "font":
        hints += _font_hints(values)

    if not hints:
        return values
    style = "; ".join(hints + [values["style"]] if "style" in values else hints)
    return {**values, "style": style}


def _font_hints(values: dict[str, str]) -> list[str]:
    hints = []
    if "color" in values:
        hints.append(f"color: {values['color']}")
    if "face" in values:
        hints.append(f"font-family: {values['face']}")
    if values.get("size") in FONT_SIZES:
        hints.append(f"font-size: {FONT_SIZES[values['size']]}")
    return hints


def image_box(values: dict[str, str]) -> str:
    """Return the box that replaces an image: its alt text, at its size when known."""
    alt = (values.get("alt") or "").strip() or "image"
    if len(alt) > MAX_ALT_CHARS:
        alt = alt[: MAX_ALT_CHARS - 1] + "\u2026"
    sizes = []
    for name in ("width", "height"):
        size = values.get(name, "")
        if _layout_number(size, MAX_LAYOUT_NUMBER):
            sizes.append(f"{name}: {size if size.endswith('%') else size + 'px'}")
    style = {"style": "; ".join(sizes)} if sizes else {}
    return f'<span class="hc-image"{_attributes(style)}>{html.escape(alt, quote=False)}</span>'


def _attributes(values: dict[str, str]) -> str:
    return "".join(f' {name}="{html.escape(value, quote=True)}"' for name, value in values.items())

