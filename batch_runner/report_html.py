"""The HTML report: one self-contained file a person opens in a browser.

Headline figures, cost over time and by endpoint as inline SVG charts, the grouped table, and a
contact sheet with each job's source beside its output (thumbnails made with ffmpeg, embedded as
data URIs), its cost and state, failures flagged with their reason. No external assets.
"""

from __future__ import annotations

import base64
import html
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from .domain import format_usd, is_remote
from .media import thumbnail
from .records import JobRecord
from .reports import Report

MAX_CARDS = 400
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d232a;background:#fafbfc}
h1{margin:0 0 4px}h2{margin:28px 0 8px;font-size:18px}.muted{color:#667}
.headline{display:flex;flex-wrap:wrap;gap:12px}.figure{background:#fff;border:1px solid #dde;border-radius:8px;
padding:10px 14px;min-width:150px}.figure b{display:block;font-size:22px}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #dde;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px}
.card{background:#fff;border:2px solid #dde;border-radius:8px;padding:8px}.card.succeeded{border-color:#3a9d5d}
.card.failed,.card.rejected{border-color:#d33}.card.uncertain{border-color:#e69500}
.pair{display:flex;gap:8px;align-items:center}.pair img{max-width:190px;max-height:190px;border-radius:4px}
.none{width:120px;height:68px;background:#eee;display:flex;align-items:center;justify-content:center;color:#889}
.reason{color:#b00;font-weight:600}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(path: str | None, label: str) -> str:
    data = thumbnail(Path(path)) if path else None
    if not data:
        return f'<div class="none">{_esc(label)}</div>'
    return (
        f'<img alt="{_esc(label)}" title="{_esc(label)}" '
        f'src="data:image/jpeg;base64,{base64.b64encode(data).decode()}">'
    )


def _bars(values: dict[str, int], *, horizontal: bool, title: str) -> str:
    """A small SVG bar chart of money by label."""
    if not values or not any(values.values()):
        return f'<p class="muted">No spend to chart ({_esc(title)}).</p>'
    items = sorted(values.items())
    top = max(values.values()) or 1
    if horizontal:
        height = 28 * len(items) + 10
        rows = []
        for i, (label, v) in enumerate(items):
            w = int(380 * v / top)
            y = 8 + 28 * i
            rows.append(
                f'<text x="0" y="{y + 14}" font-size="12">{_esc(label[-46:])}</text>'
                f'<rect x="330" y="{y}" width="{w}" height="18" fill="#4a7bd0"/>'
                f'<text x="{336 + w}" y="{y + 14}" font-size="12">${format_usd(v)}</text>'
            )
        return (
            f'<svg role="img" aria-label="{_esc(title)}" width="820" height="{height}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(rows)}</svg>'
        )
    width = max(320, 70 * len(items))
    bars = []
    for i, (label, v) in enumerate(items):
        h = int(160 * v / top)
        x = 10 + 70 * i
        bars.append(
            f'<rect x="{x}" y="{180 - h}" width="46" height="{h}" fill="#4a7bd0"/>'
            f'<text x="{x}" y="{174 - h}" font-size="11">${format_usd(v)}</text>'
            f'<text x="{x}" y="196" font-size="11">{_esc(label[5:])}</text>'
        )
    return (
        f'<svg role="img" aria-label="{_esc(title)}" width="{width}" height="204" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(bars)}</svg>'
    )


def _card(job: JobRecord) -> str:
    state = job.state.value
    out = job.output_path
    out_path = Path(out)
    rejected = out_path.with_name(f"{out_path.stem}.rejected{out_path.suffix}")
    shown = out if out_path.exists() else (str(rejected) if rejected.exists() else None)
    billed = job.billed_micro_usd
    cost = f"${format_usd(billed)} billed" if billed is not None else f"${format_usd(job.estimate_micro_usd)} est."
    reason = ""
    if state in ("failed", "rejected", "uncertain", "cancelled") and job.last_error:
        reason = f'<div class="reason">{_esc(job.last_error)}</div>'
    source = job.source
    local_source = source if source and not is_remote(source, data_uri=False) else None
    return (
        f'<div class="card {_esc(state)}" data-job="{job.id}">'
        f'<div class="pair">{_img(local_source, "source")}<span>→</span>'
        f"{_img(shown, 'rejected output' if shown and shown.endswith('.rejected' + out_path.suffix) else 'output')}"
        f"</div><div><b>job {job.id}</b> · {_esc(state)} · {cost}</div>"
        f'<div class="muted">{_esc(Path(source).name if source else "-")} → {_esc(out_path.name)}</div>{reason}</div>'
    )


def render_html(report: Report, *, title: str = "batch-runner report") -> str:
    t = report.total.as_dict()
    per = t["cost_per_delivered_second_usd"]
    outcomes = ", ".join(f"{n} {s}" for s, n in t["outcomes"].items()) or "none"
    budgets = "".join(
        f"<li>run {_esc(b['run'])}: ${_esc(b['committed_usd'])} of ${_esc(b['budget_usd'])} "
        f"({_esc(b['used_percent'])} %)</li>"
        for b in report.runs
        if b["budget_usd"]
    )
    figures = [
        ("billed", f"${t['billed_usd']}", f"estimated ${t['estimated_usd']}"),
        ("jobs", str(t["jobs"]), outcomes),
        ("delivered", f"{Decimal(t['delivered_seconds']):.1f} s", f"${per}/s" if per else "nothing delivered"),
        ("waste", f"${t['waste_usd']}", f"retry spend ${t['retry_spend_usd']}"),
        ("at risk", f"${t['at_risk_usd']}", "submitted, not yet collected"),
    ]
    headline = "".join(
        f'<div class="figure" data-figure="{_esc(k)}"><span class="muted">{_esc(k)}</span>'
        f'<b>{_esc(v)}</b><span class="muted">{_esc(sub)}</span></div>'
        for k, v, sub in figures
    )
    head_row = "".join(
        f"<th>{_esc(c)}</th>"
        for c in (
            report.group_by,
            "jobs",
            "estimated",
            "billed",
            "retry spend",
            "waste",
            "at risk",
            "delivered s",
            "$/delivered s",
        )
    )
    rows = []
    for key, d in sorted(report.groups.items()):
        g = d.as_dict()
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{_esc(v)}</td>"
                for v in (
                    key,
                    g["jobs"],
                    g["estimated_usd"],
                    g["billed_usd"],
                    g["retry_spend_usd"],
                    g["waste_usd"],
                    g["at_risk_usd"],
                    g["delivered_seconds"],
                    g["cost_per_delivered_second_usd"] or "-",
                )
            )
            + "</tr>"
        )
    cards = "".join(_card(j) for j in report.jobs[:MAX_CARDS])
    more = (
        f'<p class="muted">{len(report.jobs) - MAX_CARDS} more jobs not shown.</p>'
        if len(report.jobs) > MAX_CARDS
        else ""
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{_esc(title)}</h1><p class="muted">generated {stamp} · grouped by {_esc(report.group_by)}</p>
<section class="headline">{headline}</section>
{f"<ul>{budgets}</ul>" if budgets else ""}
<h2>Cost over time</h2>{_bars(report.billed_by_day, horizontal=False, title="billed per day")}
<h2>Cost by endpoint</h2>{_bars(report.billed_by_endpoint, horizontal=True, title="billed per endpoint")}
<h2>By {_esc(report.group_by)}</h2><table><tr>{head_row}</tr>{"".join(rows)}</table>
<h2>Contact sheet</h2><div class="sheet">{cards}</div>{more}
<ul id="errors"></ul>
<script>
window.addEventListener("error", function (e) {{
  var li = document.createElement("li");
  li.textContent = String(e.message);
  document.getElementById("errors").appendChild(li);
}});
document.body.dataset.ready = "1";
document.body.dataset.cards = String(document.querySelectorAll(".card").length);
</script>
</body></html>
"""
