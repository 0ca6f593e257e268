"""Draw the report's bar charts with pygal, as SVG data URIs.

An SVG in an <img> is an isolated document: its scripts do not run and it cannot fetch
anything, in browsers and in WeasyPrint alike. pygal embeds a small configuration script and
no external reference once `js` is empty.
"""

from __future__ import annotations

import base64
import math
import sys
from dataclasses import dataclass

import pygal
from pygal.style import Style

# pygal 3.1 appends a legacy sys.meta_path finder (PluginImportFixer, for pygal.maps plugins,
# which clicktrail does not use). It has no find_spec(), so on Python 3.11 every import that
# reaches it (any optional import that fails, in any library) emits ImportWarning.
sys.meta_path[:] = [finder for finder in sys.meta_path
                    if type(finder).__module__ != "pygal"]

# A category axis with more labels than this shows only every n-th one, so that they stay
# readable (72 hours get a label every 6 hours).
MAX_AXIS_LABELS = 24

CHART_STYLE = Style(
    background="white",
    plot_background="white",
    foreground="#333333",
    foreground_strong="#111111",
    foreground_subtle="#cccccc",
    # Pairs of a dark and a light tone: a raw series and its human-only part.
    colors=("#2b6cb0", "#90cdf4", "#dd6b20", "#fbd38d"),
    font_family="DejaVu Sans, Liberation Sans, sans-serif",
    label_font_size=10,
    major_label_font_size=10,
    legend_font_size=11,
    title_font_size=13,
    guide_stroke_color="#e2e8f0",
    guide_stroke_dasharray="0",
    major_guide_stroke_color="#e2e8f0",
    major_guide_stroke_dasharray="0",
)


@dataclass(frozen=True)
class Chart:
    title: str
    data_uri: str
    # Text alternative: the series as a sentence, for screen readers and text extraction.
    description: str


def bar_chart(title: str, labels: list[str], series: dict[str, list[int]],
              label_step: int | None = None) -> Chart:
    """Draw one bar per label and series, with a text alternative listing the non-zero bars.

    label_step labels every n-th bar on the axis; the default keeps at most MAX_AXIS_LABELS.
    """
    if label_step is None:
        label_step = max(1, math.ceil(len(labels) / MAX_AXIS_LABELS))
    return Chart(title, _render(title, labels, series, label_step), _describe(labels, series))


def _render(title: str, labels: list[str], series: dict[str, list[int]], label_step: int) -> str:
    chart = pygal.Bar(
        js=[],
        style=CHART_STYLE,
        width=900,
        height=320,
        title=title,
        x_label_rotation=60,
        show_minor_x_labels=False,
        legend_at_bottom=True,
        disable_xml_declaration=False,
    )
    chart.x_labels = labels
    chart.x_labels_major = labels[::label_step]
    chart.y_labels = _count_labels(max((max(values, default=0) for values in series.values()),
                                       default=0))
    for name, values in series.items():
        chart.add(name, values)

    svg = chart.render(is_unicode=True).encode("utf-8")
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def _count_labels(max_count: int) -> list[int]:
    # Events are whole numbers, so the axis gets about five integer ticks instead of pygal's
    # fractional defaults.
    step = max(1, math.ceil(max_count / 5))
    return list(range(0, max_count + step, step))


def _describe(labels: list[str], series: dict[str, list[int]]) -> str:
    # The first 20 labels with any non-zero value, so that the text stays short.
    parts = []
    for index, label in enumerate(labels):
        values = [(name, counts[index]) for name, counts in series.items()]
        if any(count for _name, count in values):
            parts.append(f"{label}: " + ", ".join(f"{count} {name.lower()}" for name, count in values))
    return "; ".join(parts[:20]) or "all values are 0"
