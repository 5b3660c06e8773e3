"""The HTML report: one file a person opens in a browser.

Headline figures; USD billed per day over the whole range and by endpoint and project as inline
SVG charts with axes, ticks and units; the grouped table; the runs (folded); and a contact sheet
with each job's source (or its prompt) beside its output. Thumbnails are embedded as data URIs;
a card's output plays in place from its file, linked relative to the report (a video is too big
to embed: one 5 s clip would outweigh the whole page). The page is the autoescaped jinja2
template templates/report.html.j2; this module prepares its figures.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from .domain import format_usd, is_remote
from .media import thumbnail
from .reports import NO_PROJECT, Report

MAX_CARDS = 400
MAX_TITLE_NAMES = 3
TEMPLATE = "report.html.j2"
_COLUMNS = ("jobs", "estimated", "billed", "retry spend", "waste", "at risk", "delivered s", "$/delivered s")
_LINE_FIELDS = (
    "jobs",
    "estimated_usd",
    "billed_usd",
    "retry_spend_usd",
    "waste_usd",
    "at_risk_usd",
    "delivered_seconds",
)
# chart geometry (SVG user units; the SVG scales down to the page's width)
PLOT_LEFT, PLOT_TOP, PLOT_H = 64, 16, 180
DAY_W_MAX, DAY_W_MIN = 48, 6
DAY_LABEL_W = 44  # an MM-DD tick label at 11 px
CATEGORY_LEFT, CATEGORY_W, CATEGORY_ROW = 24, 340, 40


@dataclass(frozen=True)
class Tick:
    at: float  # position along its axis
    label: str


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    label: str
    usd: str


@dataclass(frozen=True)
class Chart:
    """One SVG chart: its size, the plot's box, bars, ticks on both axes and the axes' titles
    (with units). Horizontal charts run bars along x, one category per row."""

    title: str
    width: float
    height: float
    left: float
    top: float
    right: float
    bottom: float
    bars: list[Bar]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    x_title: str
    y_title: str
    horizontal: bool


def render_html(report: Report, *, base: Path | None = None) -> str:
    """The report as one HTML page; outputs are linked relative to `base` (the report's folder).
    The contact sheet shows the report's cards: build it with `cards=MAX_CARDS`."""
    title, subtitle = _title(report)
    return _template().render(
        title=title,
        subtitle=subtitle,
        stamp=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        report=report,
        figures=_figures(report.total.as_dict()),
        budgets=report.runs,
        charts=[c for c in _charts(report) if c is not None],
        head=(report.group_by, *_COLUMNS),
        table=[_table_row(key, line.as_dict()) for key, line in sorted(report.groups.items())],
        jobs=report.cards[:MAX_CARDS],
        # once per file and page: a big batch's first cards share a few sources (an ffmpeg run each)
        thumbnail_base64=cache(_thumbnail_base64),
        more=report.job_rows - MAX_CARDS,
        base=(base or Path.cwd()).resolve(),
    )


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("batch_runner", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters.update(usd=format_usd, file_name=lambda path: Path(path).name)
    env.globals.update(
        thumbnail_base64=_thumbnail_base64, shown_output=_shown_output, local_source=_local_source, link=_link
    )
    return env.get_template(TEMPLATE)


def _names(given: tuple[str, ...], found: set[str], every: str) -> tuple[str, int]:
    """The names to show (those asked for, else those in the data) and how many there are."""
    names = list(given) or sorted(found)
    if not names:
        return every, 0
    more = f" +{len(names) - MAX_TITLE_NAMES} more" if len(names) > MAX_TITLE_NAMES else ""
    return ", ".join(names[:MAX_TITLE_NAMES]) + more, len(names)


def _title(report: Report) -> tuple[str, str]:
    """The title names the batches, the projects and the date range; the subtitle the filters."""
    s = report.scope
    batches, nb = _names(s.batches, report.batch_names, "no batch")
    projects, np_ = _names(s.projects, report.project_names, NO_PROJECT)
    first, last = report.first_day, report.last_day
    days = f"{first} to {last}" if first and last and first != last else str(first or "no dates")
    title = f"{'batches' if nb > 1 else 'batch'} {batches} · {'projects' if np_ > 1 else 'project'} {projects} · {days}"
    tags = f"tags {', '.join(s.tags)} · " if s.tags else ""
    return title, f"{tags}grouped by {report.group_by}"


def _figures(t: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The headline: (name, figure, the line under it)."""
    per = t["cost_per_delivered_second_usd"]
    outcomes = ", ".join(f"{n} {s}" for s, n in t["outcomes"].items()) or "none"
    return [
        ("billed", f"${t['billed_usd']}", f"estimated ${t['estimated_usd']}"),
        ("jobs", str(t["jobs"]), outcomes),
        ("delivered", f"{Decimal(t['delivered_seconds']):.1f} s", f"${per}/s" if per else "nothing delivered"),
        ("waste", f"${t['waste_usd']}", f"retry spend ${t['retry_spend_usd']}"),
        ("at risk", f"${t['at_risk_usd']}", "submitted, not yet collected"),
    ]


def _table_row(key: str, g: dict[str, Any]) -> list[Any]:
    return [key, *(g[f] for f in _LINE_FIELDS), g["cost_per_delivered_second_usd"] or "-"]


def _charts(report: Report) -> list[Chart | None]:
    return [
        _day_chart(report.billed_by_day),
        _category_chart("USD billed by endpoint", "endpoint", report.billed_by_endpoint),
        _category_chart("USD billed by project", "project", report.billed_by_project),
    ]


def nice_ticks(top_micro: int) -> list[int]:
    """0 and round steps (1, 2 or 5 × 10^k micro-USD) up to the first at or above `top_micro`."""
    step = 10_000  # $0.01
    while True:
        for m in (1, 2, 5):
            if top_micro <= 5 * m * step:
                n = -(-top_micro // (m * step)) or 1
                return [i * m * step for i in range(n + 1)]
        step *= 10


def _y_axis(values: list[int], length: float) -> tuple[list[Tick], float]:
    """Ticks for money along an axis `length` long, and the micro-USD one unit of length is worth."""
    ticks = nice_ticks(max(values, default=0))
    per = ticks[-1] / length
    return [Tick(length - t / per, f"${format_usd(t)}") for t in ticks], per


def _day_chart(by_day: dict[str, int]) -> Chart | None:
    """USD per UTC day, every day of the range (days without spend are $0 columns)."""
    if not by_day:
        return None
    days = sorted(by_day)
    slot = max(DAY_W_MIN, min(DAY_W_MAX, 640 // len(days)))
    ticks, per = _y_axis(list(by_day.values()), PLOT_H)
    top, bottom = PLOT_TOP, PLOT_TOP + PLOT_H
    bars = []
    for i, day in enumerate(days):
        h = by_day[day] / per
        bars.append(Bar(PLOT_LEFT + i * slot + slot * 0.15, bottom - h, slot * 0.7, h, day, format_usd(by_day[day])))
    every = -(-DAY_LABEL_W // slot)  # label every n-th day so labels never overlap
    x_ticks = [Tick(PLOT_LEFT + i * slot + slot / 2, day[5:]) for i, day in enumerate(days) if i % every == 0]
    right = PLOT_LEFT + slot * len(days)
    return Chart(
        title="USD billed per day",
        width=max(right + 24, 360),
        height=bottom + 48,
        left=PLOT_LEFT,
        top=top,
        right=max(right, 336),
        bottom=bottom,
        bars=bars,
        x_ticks=x_ticks,
        y_ticks=[Tick(top + t.at, t.label) for t in ticks],
        x_title=f"day (UTC, MM-DD), {days[0][:4]}" + (f" to {days[-1][:4]}" if days[-1][:4] != days[0][:4] else ""),
        y_title="USD billed",
        horizontal=False,
    )


def _category_chart(title: str, what: str, values: dict[str, int]) -> Chart | None:
    """USD per category as horizontal bars, each name in full on its own line above its bar."""
    if not values:
        return None
    names = sorted(values)
    ticks, per = _y_axis(list(values.values()), CATEGORY_W)
    left, top = CATEGORY_LEFT, PLOT_TOP
    bars = [
        Bar(left, top + 20 + i * CATEGORY_ROW, values[n] / per, 14, n, format_usd(values[n]))
        for i, n in enumerate(names)
    ]
    bottom = top + 10 + len(names) * CATEGORY_ROW
    longest = max(len(n) for n in names) * 8 + left + 8  # 13 px text: about 8 units a character
    return Chart(
        title=title,
        width=max(left + CATEGORY_W + 72, longest),
        height=bottom + 44,
        left=left,
        top=top,
        right=left + CATEGORY_W,
        bottom=bottom,
        bars=bars,
        x_ticks=[Tick(left + CATEGORY_W - t.at, t.label) for t in ticks],
        y_ticks=[],
        x_title="USD billed",
        y_title=what,
        horizontal=True,
    )


def _thumbnail_base64(path: str) -> str | None:
    data = thumbnail(Path(path))
    return base64.b64encode(data).decode() if data else None


def _link(path: str, base: Path) -> str:
    """A file as a URL relative to the report's folder (the two move together)."""
    return quote(os.path.relpath(Path(path).resolve(), base))


def _shown_output(output_path: str) -> tuple[str | None, str]:
    """The output to show (or the rejected one kept beside it) and its label."""
    out = Path(output_path)
    rejected = out.with_name(f"{out.stem}.rejected{out.suffix}")
    shown = output_path if out.exists() else (str(rejected) if rejected.exists() else None)
    return shown, "rejected output" if shown and shown.endswith(".rejected" + out.suffix) else "output"


def _local_source(source: str | None) -> str | None:
    return source if source and not is_remote(source, data_uri=False) else None
