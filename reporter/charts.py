"""Draw the opens-and-clicks-over-time charts with pygal, as SVG data URIs.

An SVG in an <img> is an isolated document: its scripts do not run and it cannot fetch
anything, in browsers and in WeasyPrint alike. pygal embeds a small configuration script and
no external reference once `js` is empty.
"""

from __future__ import annotations

import base64
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pygal
from pygal.style import Style

from .metrics import MICROSECONDS_PER_HOUR, DeliveryMetrics

# pygal 3.1 appends a legacy sys.meta_path finder (PluginImportFixer, for pygal.maps plugins,
# which clicktrail does not use). It has no find_spec(), so on Python 3.11 every import that
# reaches it (any optional import that fails, in any library) emits ImportWarning.
sys.meta_path[:] = [finder for finder in sys.meta_path
                    if type(finder).__module__ != "pygal"]

# The first hours after sending are shown hour by hour, the rest day by day.
MAX_HOURLY_HOURS = 72
MIN_HOURLY_HOURS = 24

CHART_STYLE = Style(
    background="white",
    plot_background="white",
    foreground="#333333",
    foreground_strong="#111111",
    foreground_subtle="#cccccc",
    colors=("#2b6cb0", "#dd6b20"),
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


def time_charts(metrics: DeliveryMetrics, zone: ZoneInfo,
                sent_at: datetime | None) -> list[Chart]:
    """Draw opens and clicks per hour for the first 72 hours, then per day if any remain."""
    if not metrics.hourly:
        return []

    hours = sorted({hour for _figure, hour in metrics.hourly})
    first_hour = hours[0]
    if sent_at is not None:
        first_hour = min(first_hour, int(sent_at.timestamp() * 1_000_000) // MICROSECONDS_PER_HOUR)

    charts = [_hourly_chart(metrics, zone, first_hour)]
    later = [hour for hour in hours if hour >= first_hour + MAX_HOURLY_HOURS]
    if later:
        charts.append(_daily_chart(metrics, zone, first_hour + MAX_HOURLY_HOURS, later[-1]))
    return charts


def _hourly_chart(metrics: DeliveryMetrics, zone: ZoneInfo, first_hour: int) -> Chart:
    # At least one day of bars, so that a delivery with one busy hour keeps readable bar widths.
    last_seen = max(hour for _figure, hour in metrics.hourly)
    last_hour = min(max(last_seen, first_hour + MIN_HOURLY_HOURS - 1),
                    first_hour + MAX_HOURLY_HOURS - 1)
    hours = range(first_hour, last_hour + 1)

    labels = [_local_time(hour, zone).strftime("%d %b %H:%M") for hour in hours]
    opens = [metrics.hourly.get(("open", hour), 0) for hour in hours]
    clicks = [metrics.hourly.get(("click", hour), 0) for hour in hours]
    title = f"Opens and clicks per hour ({zone.key})"
    return Chart(title, _render(title, labels, opens, clicks), _describe(labels, opens, clicks))


def _daily_chart(metrics: DeliveryMetrics, zone: ZoneInfo, first_hour: int,
                 last_hour: int) -> Chart:
    days: dict[str, list[int]] = {}
    first_day = _local_time(first_hour, zone).date()
    last_day = _local_time(last_hour, zone).date()
    day = first_day
    while day <= last_day:
        days[day.strftime("%d %b")] = [0, 0]
        day += timedelta(days=1)

    for (figure, hour), events in metrics.hourly.items():
        if hour < first_hour:
            continue
        totals = days[_local_time(hour, zone).strftime("%d %b")]
        totals[0 if figure == "open" else 1] += events

    labels = list(days)
    opens = [totals[0] for totals in days.values()]
    clicks = [totals[1] for totals in days.values()]
    title = f"Opens and clicks per day after the first {MAX_HOURLY_HOURS} hours ({zone.key})"
    return Chart(title, _render(title, labels, opens, clicks), _describe(labels, opens, clicks))


def _local_time(utc_hour: int, zone: ZoneInfo) -> datetime:
    # NOTE: buckets are UTC hours, so in zones with a half-hour offset a bar spans two local
    # half hours and is labelled with its local start time (for example 05:30).
    return datetime.fromtimestamp(utc_hour * 3600, UTC).astimezone(zone)


def _render(title: str, labels: list[str], opens: list[int], clicks: list[int]) -> str:
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
    # Label every 6th hour (or every day) so the axis stays readable over 72 bars.
    step = 6 if len(labels) > 24 else 1
    chart.x_labels_major = labels[::step]
    chart.y_labels = _count_labels(max(opens + clicks, default=0))
    chart.add("Opens", opens)
    chart.add("Clicks", clicks)

    svg = chart.render(is_unicode=True).encode("utf-8")
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def _count_labels(max_count: int) -> list[int]:
    # Events are whole numbers, so the axis gets about five integer ticks instead of pygal's
    # fractional defaults.
    step = max(1, math.ceil(max_count / 5))
    return list(range(0, max_count + step, step))


def _describe(labels: list[str], opens: list[int], clicks: list[int]) -> str:
    busiest = [f"{label}: {o} opens, {c} clicks"
               for label, o, c in zip(labels, opens, clicks, strict=True) if o or c]
    return "; ".join(busiest[:20]) or "no opens or clicks"
