"""Every human-readable table and line the CLI prints, as text; JSON shapes live on the result types.

Tables are rich tables that wrap long values to a terminal's width instead of truncating them.
Text for a pipe or a file is never wrapped and never carries colour codes, so a line stays greppable.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from . import plaintable
from .domain import format_usd
from .records import AttemptRecord, EventRecord, JobRecord

if TYPE_CHECKING:
    from rich.table import Table

    from .planner import BatchStatus, Plan, PlanDiff
    from .price_sync import SyncReport
    from .reconcile import Reconciliation
    from .reports import Report
    from .resolve import ResolveReport
    from .runner import CancelResult, RetryItem, RunSummary

UNWRAPPED_WIDTH = 100_000  # characters: text that is not for a terminal is never wrapped

# a line, a table, or a table indented by so many spaces (rich loads with the first table: ~25 ms)
Part: TypeAlias = "str | Table | tuple[int, Table]"


def _width() -> int:
    """The terminal's width when stdout is one, else wide enough never to wrap."""
    try:
        tty = sys.stdout.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        tty = False
    return shutil.get_terminal_size().columns if tty else UNWRAPPED_WIDTH


def text(parts: Iterable[Part], *, wrap: bool = True) -> str:
    """Lines and tables as plain text: no colour, no markup, no trailing spaces. Tables wrap to a
    terminal's width when stdout is one (and `wrap`), else never."""
    width = _width() if wrap else UNWRAPPED_WIDTH
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        indent, table = part if isinstance(part, tuple) else (0, part)
        if width == UNWRAPPED_WIDTH and table.row_count >= plaintable.PLAIN_ROWS and plaintable.plain_cells(table):
            out.extend(" " * indent + line for line in plaintable.lines(table))
            continue
        from rich.console import Console

        buf = io.StringIO()
        console = Console(
            file=buf,
            width=width - indent,
            color_system=None,
            force_terminal=False,
            markup=False,
            highlight=False,
            emoji=False,
        )
        console.print(table)
        out.extend(" " * indent + line.rstrip() for line in buf.getvalue().splitlines())
    return "\n".join(out)


def _table(*columns: str, header: bool = True, gap: int = 2) -> Table:
    """A borderless table; a column named with a leading ">" is right-aligned. Values wrap, never
    truncate: a name too long for its column folds onto the next line."""
    from rich import box
    from rich.table import Table

    table = Table(
        box=box.SIMPLE_HEAD if header else None,
        show_header=header,
        show_edge=False,
        pad_edge=False,
        padding=(0, gap, 0, 0),
        header_style="",
    )
    for name in columns:
        table.add_column(name.lstrip(">"), justify="right" if name.startswith(">") else "left", overflow="fold")
    return table


def _rel(path: str, root: Path | str) -> str:
    if isinstance(root, str):  # an object-store root (s3://bucket/prefix): keys shown below it
        return path[len(root) + 1 :] if path.startswith(root + "/") else path
    prefix = str(root).rstrip("/") + "/"
    rest = path[len(prefix) :] if path.startswith(prefix) else ""
    if rest and "//" not in f"/{rest}" and "/." not in f"/{rest}" and not rest.endswith("/"):
        return rest  # a plain path under root: what Path.relative_to gives, without parsing it (big plans)
    p = Path(path)
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


def _usd_or_dash(micro: int | None) -> str:
    return format_usd(micro) if micro is not None else "-"


# --------------------------------------------------------------------------- endpoints


def endpoints(label: str, rows: list[dict[str, Any]]) -> str:
    parts: list[Part] = [f"price table: {label}   (* = unverified price)"]
    for ep in rows:
        flag = "" if ep["verified"] else " *"
        parts.append(
            f"\n{ep['id']}{flag}\n  alias {ep['alias']}   billing {ep['billing']}   unit {ep['unit']}"
            + (f"   max source {ep['max_source_s']} s" if ep["max_source_s"] else "")
        )
        prices = _table("", "", header=False)
        for p in ep["prices"]:
            what = " ".join(x for x in (p["resolution"], p["duration"]) if x) or "any"
            prices.add_row(what, f"${p['usd']} per {p['per']}")
        parts.append((4, prices))
        for m in ep["modifiers"]:
            cond = ", ".join(f"{k}={json.dumps(v)}" for k, v in m["when"].items())
            parts.append(f"    × {m['multiplier']} when {cond}" + ("" if m["verified"] else " *"))
        if not ep["verified"]:
            parts.append(f"    * {ep['evidence'] or 'unverified'}: {ep['source']}")
    return text(parts)


# --------------------------------------------------------------------------- plan, diff, enqueue, status


def plan(result: Plan) -> str:
    m = result.manifest
    swept = [
        k for k in ("aspect_ratio", "resolution", "duration", "mode", "edit_strength") if k in m.endpoint.field_map
    ]
    jobs = _table("key", "source", "parameters", ">dur s", ">units", ">cost $", "output", gap=1)
    for j in result.jobs:
        est = j.estimate
        assert est is not None
        dur = f"{j.probe.duration:.2f}" if j.probe and j.probe.duration is not None else "-"
        jobs.add_row(
            j.key[:10],  # a key prefix is enough for `show` and `retry --job`
            Path(j.source).name if j.source else "-",
            " ".join(str(j.params[k]) for k in swept if k in j.params),
            dur,
            str(est.billable_units),
            est.usd + ("" if est.verified else "*"),
            _rel(j.output, m.output_root),
        )
    parts: list[Part] = [
        f"batch {m.batch}   endpoint {m.endpoint.id}   price table {result.price_table}"
        + (f"   fal prices {result.fal_prices} (the higher is reserved)" if result.fal_prices else ""),
        jobs,
    ]
    parts += [f"INVALID    {item.source}: {item.reason}  ({item.origin})" for item in result.invalid]
    parts.append("")
    totals = _table("", "", ">", ">", header=False)
    for what in ("endpoint", "resolution"):
        for k, (n, c) in result.totals_by(what).items():
            totals.add_row(f"by {what}", k, f"{n} jobs", f"${format_usd(c)}")
    totals.add_row("total", "", f"{len(result.jobs)} jobs", f"${format_usd(result.total_micro_usd)}")
    parts.append((2, totals))
    if m.budget_micro_usd is not None:
        parts.append(f"  budget per run ${format_usd(m.budget_micro_usd)}")
    if any(j.estimate and not j.estimate.verified for j in result.jobs):
        parts.append(
            "  * unverified price: no fal page we hold states it; see `batch-runner endpoints`, "
            "and `batch-runner prices sync` for fal's own"
        )
    return text(parts)


def plan_diff(result: Plan, diff: PlanDiff) -> str:
    root = result.manifest.output_root
    rows = _table("", "", ">", "", "", header=False)
    for job in diff.new:
        rows.add_row("new", job.key[:10], f"${job.estimate.usd if job.estimate else '?'}", _rel(job.output, root), "")
    for job, old in diff.changed:
        usd = f"${job.estimate.usd if job.estimate else '?'}"
        note = f"(replaces {old.key[:10]}, {old.state.value}: bills again)"
        rows.add_row("changed", job.key[:10], usd, _rel(job.output, root), note)
    for row in diff.removed:
        rows.add_row(
            "removed", row.key[:10], "", _rel(row.output_path, root), f"({row.state.value}; still in the table)"
        )
    states: dict[str, int] = {}
    for _, state in diff.unchanged:
        states[state.value] = states.get(state.value, 0) + 1
    unchanged = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
    rows.add_row("unchanged", f"{len(diff.unchanged)} job(s): {unchanged}", "", "", "")
    return text(
        [
            f"batch {result.manifest.batch}: plan against the job table   price table {result.price_table}",
            (2, rows),
            (
                f"  tonight adds {len(diff.new)} new and {len(diff.changed)} changed job(s): "
                f"${format_usd(diff.added_micro_usd)}"
            ),
        ]
    )


def plan_over_budget(total_micro_usd: int, budget_micro_usd: int) -> str:
    return (
        f"warning: estimate ${format_usd(total_micro_usd)} is over the manifest budget "
        f"${format_usd(budget_micro_usd)}; a run will stop dispatching at the budget"
    )


def probed(result: Plan) -> str:
    return f"probed {result.probes_run} source(s), {result.probes_cached} from cache"


def enqueued(batch: str, added: int, existing: int, invalid: int) -> str:
    return f"batch {batch}: {added} job(s) added, {existing} already in the table" + (
        f", {invalid} invalid source(s) skipped" if invalid else ""
    )


def job_list(rows: list[JobRecord]) -> str:
    table = _table(">", "", "", "", header=False, gap=1)
    for r in rows:
        error = f"({r.last_error})" if r.last_error else ""
        table.add_row(str(r.id), r.key[:12], r.state.value, f"{r.source or '-'} → {r.output_path}", error)
    return text([table])


def batch_status(batches: list[BatchStatus]) -> str:
    """Jobs per batch, by state, with their estimated cost."""
    if not batches:
        return "no jobs yet: `batch-runner enqueue MANIFEST` adds some"
    table = _table("", ">", ">", "", header=False)
    for b in batches:
        by_state = "  ".join(f"{s} {n}" for s, n in sorted(b.states.items()))
        table.add_row(b.batch, f"{b.jobs} jobs", f"${format_usd(b.estimated_micro_usd)} estimated", by_state)
    return text([table])


# --------------------------------------------------------------------------- run, show, retry, cancel, resolve


def run_summary(summary: RunSummary) -> str:
    counts = "  ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())) or "nothing to do"
    budget = f" of a ${format_usd(summary.budget_micro_usd)} budget" if summary.budget_micro_usd is not None else ""
    parts: list[Part] = [
        f"run {summary.run}: {counts}",
        (
            f"  estimated ${format_usd(summary.estimated_micro_usd)}   billed ${format_usd(summary.billed_micro_usd)}"
            f"{budget}   {summary.elapsed_s:.1f} s"
        ),
    ]
    problems = _table("", "", "", header=False, gap=1)
    for f in summary.failed:
        problems.add_row(f["state"].upper(), f"job {f['job']}", f"{f['source'] or ''} → {f['output']}: {f['error']}")
    for u in summary.unexpected:
        problems.add_row("BUG", "", f"{u} (the job was let go safely; please report this)")
    if problems.rows:
        parts.append((2, problems))
    if summary.not_run and summary.stopped_by:
        parts.append(f"  {summary.not_run} job(s) still queued")
    return text(parts)


def job_history(row: JobRecord, attempts: list[AttemptRecord], events: list[EventRecord]) -> str:
    facts = _table("", "", header=False, gap=1)
    facts.add_row("endpoint", row.endpoint)
    facts.add_row("source", row.source)
    facts.add_row("output", row.output_path)
    estimate = f"${format_usd(row.estimate_micro_usd)} ({row.price_table})"
    facts.add_row("estimate", f"{estimate}   billed ${_usd_or_dash(row.billed_micro_usd)}")
    if row.last_error:
        facts.add_row("last error:", row.last_error)
    facts.add_row("input", row.input_json)
    tried = _table("", "", "", "", "", header=False, gap=1)
    for a in attempts:
        tried.add_row(
            f"#{a.number}",
            a.state.value,
            f"request {a.request_id or '-'}",
            f"worker {a.worker}",
            f"billed {_usd_or_dash(a.billed_micro_usd)}" + (f"  error: {a.error}" if a.error else ""),
        )
    trail = _table("", "", "", "", "", header=False)
    for e in events:
        move = f"{e.from_state or ''} → {e.to_state}" if e.to_state else ""
        details = json.dumps(e.details, sort_keys=True) if e.details else ""
        trail.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}", e.kind, move, f"{e.user}@{e.host}:{e.pid}", details)
    return text(
        [
            f"job {row.id}  key {row.key}  state {row.state.value}",
            (2, facts),
            "attempts:",
            (2, tried),
            "events:",
            (2, trail),
        ]
    )


def retry_plan(plan: list[RetryItem], queued: int, may_pay_micro_usd: int, dry_run: bool) -> str:
    table = _table(">", "", "", "", header=False, gap=1)
    for item in plan:
        what = (
            "download the paid output again: $0"
            if item.how == "redeliver"
            else f"new attempt: may pay ${format_usd(item.may_pay_micro_usd)}"
        )
        table.add_row(str(item.job.id), item.job.key[:12], item.job.state.value, what)
    verb = "would be queued again" if dry_run else "queued again; run `batch-runner run` to process them"
    return text([*([table] if plan else []), f"{queued} job(s) {verb}; at most ${format_usd(may_pay_micro_usd)} more"])


def cancelled(result: CancelResult) -> str:
    lines = [f"cancelled {result.queued} queued job(s) and {result.at_fal} request(s) still queued at fal"]
    if result.running:
        lines.append(
            f"{result.running} request(s) were already running: fal was asked to stop them but may still "
            f"finish and bill them; the next `run` or `work` follows them to their end and records it"
        )
    for s in result.uncertain.settled if result.uncertain else []:
        lines.append(f"uncertain job {s.job_id}: {s.outcome}: {s.detail}")
    return "\n".join(lines)


def resolved(report: ResolveReport) -> str:
    table = _table("", "", "", "", header=False, gap=1)
    for s in report.settled:
        table.add_row(f"job {s.job_id}", s.outcome, s.detail, f"[{s.request_id}]" if s.request_id else "")
    counts = report.as_dict()["counts"]
    total = "  ".join(f"{k} {v}" for k, v in counts.items() if v) or "nothing to settle"
    return text([*([table] if report.settled else []), total])


# --------------------------------------------------------------------------- report, reconcile, prices


def report_table(report: Report, *, wrap: bool = True) -> str:
    """`report --format table`: one row per group and the total, then unconfirmed bills and budgets
    (`wrap` False for a file: never wrapped)."""
    rows = [(k, v.as_dict()) for k, v in sorted(report.groups.items())] + [("TOTAL", report.total.as_dict())]
    table = _table(
        report.group_by,
        ">jobs",
        ">estimated",
        ">billed",
        ">retries",
        ">waste",
        ">at risk",
        ">out s",
        ">$/out s",
        "outcomes",
        gap=1,
    )
    for key, d in rows:
        table.add_row(
            key,
            str(d["jobs"]),
            d["estimated_usd"],
            d["billed_usd"],
            d["retry_spend_usd"],
            d["waste_usd"],
            d["at_risk_usd"],
            f"{Decimal(d['delivered_seconds']):.1f}",
            d["cost_per_delivered_second_usd"] or "-",
            " ".join(f"{s} {n}" for s, n in d["outcomes"].items()),
        )
    parts: list[Part] = [table]
    if report.total.unconfirmed:
        parts.append(
            f"billed includes ${format_usd(report.total.unconfirmed)} priced from our price table because "
            "fal's answers carried no billable units; `batch-runner resolve` (admin key) replaces it with "
            "fal's billing events"
        )
    for b in report.runs:
        if b["budget_usd"]:
            parts.append(
                f"budget: run {b['run']} committed ${b['committed_usd']} of ${b['budget_usd']} "
                f"({b['used_percent']} %), {b['status']}"
            )
    return text(parts, wrap=wrap)


def reconciliation(rec: Reconciliation) -> str:
    parts: list[Part] = [
        f"reconcile {rec.since:%Y-%m-%d %H:%M} → {rec.until:%Y-%m-%d %H:%M} UTC (whole days, on both sides)"
    ]
    days = _table("", "", "", "", header=False)
    for endpoint, day, amount in rec.matched:
        days.add_row("ok", day, endpoint, f"${format_usd(amount)}")
    for d in rec.differences:
        x = d.as_dict()
        days.add_row(
            "DIFFERENT",
            d.day,
            d.endpoint,
            f"ours ${x['ours_usd']}  fal ${x['fal_usd']}  ({x['kind']}: ${x['difference_usd']})",
        )
        for u in x["explained_by_uncertain_submits"]:
            if u["confidence"] == "confirmed":
                why = (
                    f"confirmed: fal billed request {u['request_id']} for the uncertain submit of job {u['job']} "
                    f"(attempt {u['attempt']}, ${u['reserved_usd']}): `batch-runner resolve` records it"
                )
            else:
                why = (
                    f"possibly the uncertain submit of job {u['job']} (attempt {u['attempt']}, "
                    f"${u['reserved_usd']}); fal's records could not confirm it"
                )
            days.add_row("", "", "", why)
    if days.rows:
        parts.append((2, days))
    for p in rec.drift:
        parts.append(
            f"  PRICE DRIFT {p['endpoint']}: {p['kind']}: ${p['fal_unit_price_usd']} per {p['unit']}, "
            f"{p['compared_with']} says ${p['compared_with_usd']} per {p['compared_with_unit']}"
        )
    for n in rec.notes:
        parts.append(f"  {n['kind'].upper()}{' ' + n['endpoint'] if n['endpoint'] else ''}: {n['detail']}")
    if rec.clean:
        parts.append("  our ledger and fal's usage agree")
    return text(parts)


def prices_synced(report: SyncReport, path: Path) -> str:
    lines = [f"wrote {len(report.synced.prices)} fal price(s) to {path} ({report.synced.label})"]
    for old, new in report.changed:
        lines.append(f"  changed   {new.endpoint}: ${old.unit_price} per {old.unit} → ${new.unit_price} per {new.unit}")
    for endpoint in report.missing:
        lines.append(f"  missing   {endpoint}: fal's pricing API gave no price; the price table stands")
    for p in report.unknown_units:
        lines.append(
            f"  unknown unit  {p.endpoint}: fal prices it per {p.unit!r}, which batch-runner cannot map; "
            "the price table stands"
        )
    for p, unit in report.other_units:
        lines.append(
            f"  other unit    {p.endpoint}: fal prices it per {p.unit}, the price table per {unit}; "
            "the price table stands"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- notices (stderr) and one-liners


def warning(text_: str) -> str:
    return f"warning: {text_}"


def wrote(path: Path) -> str:
    return f"wrote {path}"


INTERRUPTED = "interrupted"
STOPPING = (
    "\nstopping: no new jobs; in-flight requests stay recorded and resume on the next run "
    "(Ctrl-C again to exit at once)"
)
EMULATOR_STOPPED = "fal emulator stopped"


def embedded_emulator(url: str) -> str:
    return (
        f"EMULATOR: every fal call goes to a local emulator at {url}. Nothing real is called "
        "and nothing is billed; the outputs are real files made with ffmpeg."
    )


def emulator_listening(url: str) -> str:
    return (
        f"fal emulator listening on {url}: nothing real is called, nothing is billed. "
        f"Point batch-runner at it with --fal-url {url}"
    )


def schema_change(shown_url: str, before: str | None, after: str | None) -> str | None:
    """What `db upgrade` changed (stderr), or None when the database was already at head."""
    if before is None:
        return f"created the batch-runner schema in {shown_url}"
    if before != after:
        return f"migrated {shown_url} from revision {before}"
    return None


def schema_revision(shown_url: str, revision: str | None) -> str:
    return f"{shown_url} is at revision {revision}"


def schema_revisions(current: str | None, head: str | None) -> str:
    return f"current {current or 'none'}   head {head}"
