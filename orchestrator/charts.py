"""Charts for the web pages (SPEC 11): standalone inline SVG, drawn on the server by pygal.

Each function takes the dict the page already has (`report.campaign_report`, `customer_card`) and
returns one `<svg>` element as text, to put straight into the HTML:

- no JavaScript and no external resource: pygal's tooltip script and its config script are
  removed; the style is an inline `<style>` scoped to the chart's own id, so several charts live
  on one page.  Every bar carries a `<title>` (the browser's own tooltip, and what a screen reader
  says) and the numbers that matter are printed on the bars;
- every label (campaign names, suppression reasons) is XML-escaped by the serializer;
- a `viewBox` and `width="100%"` without a fixed height: the chart scales to the column it is put
  in, and the sizes below are chosen so that the text stays readable on a phone (360 px wide).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Sequence

import pygal
from pygal.style import Style

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
# Serialized with SVG as the default namespace (no `ns0:` prefixes): ElementTree's
# `default_namespace=` option refuses the unqualified attribute names SVG is made of.
ET.register_namespace("", SVG_NS)
ET.register_namespace("xlink", XLINK_NS)

WIDTH = 440  # viewBox units; on a 360 px screen a 14-unit font is still 11 px
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"

COLORS = {
    "targeted": "#5b6b7f",
    "suppressed": "#e08a1e",
    "planned": "#8fb8de",
    "queued": "#6fa3d6",
    "sending": "#4f8fcc",
    "sent": "#2e9e5b",
    "failed": "#d64545",
    "unknown": "#8e5ea2",
    "cancelled": "#a0a0a0",
    "pending": "#9cc3e6",
    "season": "#4f8fcc",
    "season_now": "#e08a1e",
}
FUNNEL_STATES = ("planned", "queued", "sending", "sent", "failed", "unknown", "cancelled")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _style(colors: Sequence[str]) -> Style:
    return Style(
        background="#ffffff",
        plot_background="#ffffff",
        foreground="#222222",
        foreground_strong="#111111",
        foreground_subtle="#d8d8d8",
        opacity="1",
        opacity_hover="0.85",
        transition="none",
        colors=tuple(colors),
        font_family=FONT,
        label_font_family=FONT,
        major_label_font_family=FONT,
        value_font_family=FONT,
        value_label_font_family=FONT,
        title_font_family=FONT,
        legend_font_family=FONT,
        no_data_font_family=FONT,
        title_font_size=16,
        label_font_size=13,
        major_label_font_size=13,
        value_font_size=13,
        value_label_font_size=13,
        legend_font_size=13,
        no_data_font_size=16,
    )


def _config(**options: Any) -> dict[str, Any]:
    base = dict(
        js=[], disable_xml_declaration=True, width=WIDTH, height=300, margin=8, spacing=8,
        show_legend=False, print_values=False, no_data_text="No data yet", include_x_axis=True,
        truncate_label=-1, truncate_legend=-1, pretty_print=False,
    )
    base.update(options)
    return base


def _inline(chart: Any, label: str, *, values_after_bars: bool = False) -> str:
    """pygal's SVG made fit for inline HTML: no scripts, no comments, scalable, labelled."""
    root = ET.fromstring(chart.render(is_unicode=True))  # the parser drops the comments
    for parent in list(root.iter()):
        for child in list(parent):
            if child.tag == f"{{{SVG_NS}}}script":
                parent.remove(child)
    if values_after_bars:  # horizontal bars: the number just past the end of its bar
        for text in root.iter(f"{{{SVG_NS}}}text"):
            if text.get("class") == "value" and text.get("x"):
                text.set("x", f"{float(text.get('x', '0')) + 4:.2f}")
                text.set("text-anchor", "start")
    _bar_titles(root)
    root.set("width", "100%")
    root.set("role", "img")
    root.set("aria-label", label)
    root.set("preserveAspectRatio", "xMidYMid meet")
    root.set("style", "max-width:100%;height:auto;display:block")
    return ET.tostring(root, encoding="unicode")


def _bar_titles(root: ET.Element) -> None:
    """A `<title>` in every bar, from pygal's own value description: a tooltip without script."""
    desc, title, group = f"{{{SVG_NS}}}desc", f"{{{SVG_NS}}}title", f"{{{SVG_NS}}}g"
    for node in root.iter(group):
        if "bar" not in (node.get("class") or "").split():
            continue
        values = {d.get("class"): d.text or "" for d in node.findall(desc)}
        text = " ".join(part for part in (values.get("x_label") or values.get("x"), values.get("value")) if part)
        if text:
            element = ET.Element(title)
            element.text = text
            node.insert(0, element)


# --- campaign report ------------------------------------------------------------------------------


def funnel_bars(report: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(label, count, color) of the funnel chart: targeted, each suppression reason, then every
    state that has rows (sent always)."""
    funnel = report["funnel"]
    bars = [("targeted", int(funnel.get("targeted", 0)), COLORS["targeted"])]
    for reason, count in funnel.get("suppressed", {}).items():
        bars.append((f"suppressed: {reason}", int(count), COLORS["suppressed"]))
    for state in FUNNEL_STATES:
        count = int(funnel.get(state, 0))
        if count or state == "sent":
            bars.append((state, count, COLORS[state]))
    return bars


def funnel_svg(report: dict[str, Any]) -> str:
    """The funnel of the whole campaign (all runs) as horizontal bars, numbers printed."""
    bars = funnel_bars(report)
    title = f"Funnel: {report['campaign']}"
    chart = pygal.HorizontalBar(**_config(
        title=title, height=70 + 30 * len(bars), print_values=True, print_values_position="top",
        style=_style([COLORS["targeted"]]), show_x_labels=False, show_minor_x_labels=False,
        range=(0, max(1, max(count for _, count, _ in bars)) * 1.2),  # room for the longest number
    ))
    chart.value_formatter = lambda value: f"{int(value):,}".replace(",", " ")
    # pygal draws the first category at the bottom: reversed, the funnel reads top-down.
    chart.x_labels = [label for label, _, _ in reversed(bars)]
    chart.add("messages", [{"value": count, "color": color, "label": label}
                           for label, count, color in reversed(bars)])
    return _inline(chart, title, values_after_bars=True)


def hours_svg(report: dict[str, Any]) -> str:
    """Messages per hour of the recipients' own clocks: sent, and still waiting (stacked)."""
    sent = [int(n) for n in report.get("sends_per_local_hour") or [0] * 24]
    pending = [int(n) for n in report.get("pending_per_local_hour") or [0] * 24]
    title = f"Sends per local hour: {report['campaign']}"
    with_pending = any(pending)
    top = max((s + p for s, p in zip(sent, pending)), default=0)
    step = max(1, -(-top // 6))
    whole = {"y_labels": list(range(0, top + step + 1, step))} if top else {}  # counts: whole numbers
    chart = pygal.StackedBar(**_config(
        **whole, title=title, height=280, show_legend=with_pending, legend_at_bottom=True, legend_at_bottom_columns=2,
        style=_style([COLORS["sent"], COLORS["pending"]]), x_labels_major_every=3, show_minor_x_labels=False,
        x_title="local hour of the recipient", show_minor_y_labels=True,
    ))
    chart.x_labels = [f"{hour:02d}" for hour in range(24)]
    if any(sent) or with_pending:
        chart.add("sent", sent)
        if with_pending:
            chart.add("waiting", pending)
    return _inline(chart, title)


# --- customer card --------------------------------------------------------------------------------


def season_svg(card: dict[str, Any]) -> str:
    """The client's seasonal index per calendar month (1.0 = an average month); the month of the
    card's local time is highlighted."""
    index = card.get("seasonal_index") or []
    current = _month_of(card.get("local_time"))
    title = "Purchases per month (1.0 = an average month; this month in orange)"
    chart = pygal.Bar(**_config(
        title=title, height=260, print_values=True, print_values_position="top",
        style=_style([COLORS["season"]]), show_minor_y_labels=True,
    ))
    chart.value_formatter = lambda value: f"{value:.1f}"
    chart.x_labels = [item.get("name") or MONTHS[item["month"] - 1] for item in index] or list(MONTHS)
    if index:
        top = max(float(item["index"]) for item in index)
        chart.y_labels = [step / 2 for step in range(0, int(top * 2) + 2)]
        chart.add("index", [{"value": float(item["index"]),
                             "color": COLORS["season_now"] if item["month"] == current else COLORS["season"]}
                            for item in index])
    return _inline(chart, title)


def _month_of(local_time: Any) -> int | None:
    text = str(local_time or "")
    if len(text) >= 7 and text[4] == "-" and text[5:7].isdigit():
        return int(text[5:7])
    return None
