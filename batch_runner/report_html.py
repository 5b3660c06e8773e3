"""The HTML report: one self-contained file a person opens in a browser.

Headline figures, cost over time and by endpoint as inline SVG charts, the grouped table, and a
contact sheet with each job's source beside its output (thumbnails made with ffmpeg, embedded as
data URIs), its cost and state, failures flagged with their reason. No external assets. The page
is the autoescaped jinja2 template templates/report.html.j2; this module prepares its figures.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from .domain import format_usd, is_remote
from .media import thumbnail
from .reports import Report

MAX_CARDS = 400
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


@dataclass(frozen=True)
class _Bar:
    """One bar of a chart: where it starts across the chart, how long it is, and its money."""

    label: str
    usd: str
    offset: int
    length: int


def render_html(report: Report, *, title: str = "batch-runner report") -> str:
    """The report as one HTML page."""
    return _template().render(
        title=title,
        stamp=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        report=report,
        figures=_figures(report.total.as_dict()),
        budgets=[b for b in report.runs if b["budget_usd"]],
        by_day=_bars(report.billed_by_day, start=10, step=70, full=160),
        by_endpoint=_bars(report.billed_by_endpoint, start=8, step=28, full=380),
        head=(report.group_by, *_COLUMNS),
        table=[_table_row(key, line.as_dict()) for key, line in sorted(report.groups.items())],
        jobs=report.jobs[:MAX_CARDS],
        more=len(report.jobs) - MAX_CARDS,
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
    env.globals.update(thumbnail_base64=_thumbnail_base64, shown_output=_shown_output, local_source=_local_source)
    return env.get_template(TEMPLATE)


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


def _bars(values: dict[str, int], *, start: int, step: int, full: int) -> list[_Bar]:
    """Money by label, sorted, as bars at start + step × i, the largest `full` long; none when
    there is no spend to chart."""
    if not values or not any(values.values()):
        return []
    top = max(values.values()) or 1
    return [
        _Bar(label, format_usd(v), start + step * i, int(full * v / top))
        for i, (label, v) in enumerate(sorted(values.items()))
    ]


def _thumbnail_base64(path: str) -> str | None:
    data = thumbnail(Path(path))
    return base64.b64encode(data).decode() if data else None


def _shown_output(output_path: str) -> tuple[str | None, str]:
    """The output to show (or the rejected one kept beside it) and its label."""
    out = Path(output_path)
    rejected = out.with_name(f"{out.stem}.rejected{out.suffix}")
    shown = output_path if out.exists() else (str(rejected) if rejected.exists() else None)
    return shown, "rejected output" if shown and shown.endswith(".rejected" + out.suffix) else "output"


def _local_source(source: str | None) -> str | None:
    return source if source and not is_remote(source, data_uri=False) else None
