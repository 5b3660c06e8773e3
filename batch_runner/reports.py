"""Use case: what did it cost, what did it produce, where did money go to waste.

Figures (money in micro-USD inside, decimal strings outside):
  estimated       the jobs' exact estimates at plan time
  billed          what fal billed, attempt by attempt
  retry spend     billed on attempt #2 and later
  waste           billed on attempts that delivered nothing (failed check, expired result, billed errors)
  at risk         reserved on attempts still open (sent, in flight, downloading, uncertain)
  unconfirmed     billed figures that are ours, not yet fal's (provisional: our price table, when
                  fal's answer carried no billable units); `resolve` settles them with fal's
                  billing events
  delivered s     the measured length of verified outputs; cost per delivered second includes waste
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from . import atomic
from .db.ledger import Scope, ledger
from .db.prune import RollupRow, rollup_totals
from .db.repo import Repository
from .domain import PROVISIONAL, AttemptState, JobState, format_usd
from .errors import ConfigError, shorten
from .records import AttemptRecord, JobRecord, RunRecord
from .timewindow import shown

GROUPINGS = ("endpoint", "resolution", "tag", "project", "day", "batch")
FORMATS = ("table", "csv", "json", "html")
OPEN_ATTEMPTS = {
    AttemptState.SENDING,
    AttemptState.SUBMITTED,
    AttemptState.IN_PROGRESS,
    AttemptState.DOWNLOADING,
    AttemptState.UNCERTAIN,
}
NO_PROJECT = "(no project)"
PRUNED = "(pruned)"  # the group of pruned figures when grouping by what rollups do not keep
MAX_CHART_DAYS = 366  # a longer window is charted over the days that have attempts
MAX_NAMES_SHOWN = 3


@dataclass
class Line:
    """The figures of one group (or of the total)."""

    jobs: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    estimated: int = 0
    billed: int = 0
    retry_spend: int = 0
    waste: int = 0
    at_risk: int = 0
    unconfirmed: int = 0
    delivered_us: int = 0

    @property
    def cost_per_delivered_second(self) -> Decimal | None:
        if not self.delivered_us:
            return None
        per = Decimal(self.billed) / (Decimal(self.delivered_us) / 1_000_000) / 1_000_000
        return per.quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)

    def add_job(self, job: JobRecord) -> None:
        self.jobs += 1
        self.outcomes[job.state.value] += 1
        self.estimated += job.estimate_micro_usd

    def add_attempt(self, a: AttemptRecord) -> None:
        billed = a.billed_micro_usd or 0
        self.billed += billed
        if a.number > 1:
            self.retry_spend += billed
        if billed and a.state != AttemptState.SUCCEEDED:
            self.waste += billed
        if a.state in OPEN_ATTEMPTS:
            self.at_risk += a.reserved_micro_usd or 0
        if (a.price_source or "").startswith(PROVISIONAL):
            self.unconfirmed += billed
        if a.state == AttemptState.SUCCEEDED and a.duration_us:
            self.delivered_us += a.duration_us

    def add_rollup(self, r: RollupRow) -> None:
        """Pruned jobs' figures (`prune`): their attempts are gone, these sums stayed."""
        self.jobs += r.jobs
        for state, n in r.outcomes.items():
            self.outcomes[state] += n
        self.estimated += r.estimated_micro_usd
        self.billed += r.billed_micro_usd
        self.retry_spend += r.retry_spend_micro_usd
        self.waste += r.waste_micro_usd
        self.delivered_us += r.delivered_us

    def as_dict(self) -> dict[str, Any]:
        per = self.cost_per_delivered_second
        return {
            "jobs": self.jobs,
            "outcomes": dict(sorted(self.outcomes.items())),
            "estimated_usd": format_usd(self.estimated),
            "billed_usd": format_usd(self.billed),
            "retry_spend_usd": format_usd(self.retry_spend),
            "waste_usd": format_usd(self.waste),
            "at_risk_usd": format_usd(self.at_risk),
            "unconfirmed_usd": format_usd(self.unconfirmed),
            "delivered_seconds": f"{Decimal(self.delivered_us) / 1_000_000:f}",
            "cost_per_delivered_second_usd": f"{per:f}" if per is not None else None,
        }


@dataclass
class Report:
    group_by: str
    groups: dict[str, Line]
    total: Line
    runs: list[dict[str, Any]]
    jobs: list[JobRecord] = field(default_factory=list)  # for the HTML contact sheet and line items
    billed_by_day: dict[str, int] = field(default_factory=dict)  # every day of the range, $0 days too
    billed_by_endpoint: dict[str, int] = field(default_factory=dict)
    billed_by_project: dict[str, int] = field(default_factory=dict)
    scope: Scope = field(default_factory=Scope)
    attempts: list[AttemptRecord] = field(default_factory=list)
    first_day: date | None = None  # the date range the report covers (inclusive)
    last_day: date | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "group_by": self.group_by,
            "scope": self.scope_dict(),
            "groups": {k: v.as_dict() for k, v in sorted(self.groups.items())},
            "total": self.total.as_dict(),
            "budgets": self.runs,
        }

    def scope_dict(self) -> dict[str, Any]:
        """What the report covers: the filters given and the dates its figures span."""
        return {
            "batches": list(self.scope.batches),
            "projects": list(self.scope.projects),
            "tags": list(self.scope.tags),
            "since": self.scope.since.isoformat() if self.scope.since else None,
            "until": self.scope.until.isoformat() if self.scope.until else None,
            "first_day": self.first_day.isoformat() if self.first_day else None,
            "last_day": self.last_day.isoformat() if self.last_day else None,
        }


def _keys(group_by: str, job: JobRecord, when: datetime | None) -> list[str]:
    if group_by == "endpoint":
        return [job.endpoint]
    if group_by == "resolution":
        return [str(job.params.get("resolution", "n/a"))]
    if group_by == "tag":
        return list(job.tags) or ["(untagged)"]
    if group_by == "project":
        return [job.project or NO_PROJECT]
    if group_by == "batch":
        return [job.batch or ""]
    return [(when or job.created_at).date().isoformat()]


def build(repo: Repository, scope: Scope, *, group_by: str, now: datetime | None = None) -> Report:
    """The report over `scope`; a batch asked for by name that does not exist is an error."""
    got = ledger(repo.engine, scope)
    missing = [b for b in scope.batches if b not in got.known_batches]
    if missing:
        names = ", ".join(shown(b) for b in missing[:MAX_NAMES_SHOWN])
        more = f" and {len(missing) - MAX_NAMES_SHOWN} more" if len(missing) > MAX_NAMES_SHOWN else ""
        raise ConfigError(f"no batch named {names}{more}", hint="`batch-runner status` lists the batches")
    by_job: dict[int, list[AttemptRecord]] = defaultdict(list)
    for a in got.attempts:
        by_job[a.job_id].append(a)
    groups: dict[str, Line] = defaultdict(Line)
    total = Line()
    for job in got.jobs:
        mine = by_job.get(job.id, [])
        last = mine[-1].created_at if mine else None
        # job-level figures go where its latest attempt ran (or where it was created); a pruned
        # job's are in its rollup
        if not job.pruned_at:
            for line in [groups[k] for k in _keys(group_by, job, last)] + [total]:
                line.add_job(job)
        for a in mine:  # money goes where each attempt ran
            for line in [groups[k] for k in _keys(group_by, job, a.created_at)] + [total]:
                line.add_attempt(a)
    rollups = rollup_totals(repo.engine, scope)
    for r in rollups:
        for line in [groups[_rollup_key(group_by, r)], total]:
            line.add_rollup(r)
    report = Report(group_by, dict(groups), total, _budgets(got.runs), got.jobs, scope=scope, attempts=got.attempts)
    _charts(report, by_job, now or datetime.now(UTC), rollups)
    return report


def _rollup_key(group_by: str, r: RollupRow) -> str:
    """A rollup's group; rollups keep no resolution or tags, so those groups show "(pruned)"."""
    keys = {"endpoint": r.endpoint, "project": r.project or NO_PROJECT, "batch": r.batch, "day": r.day.isoformat()}
    return keys.get(group_by, PRUNED)


def _budgets(runs: list[RunRecord]) -> list[dict[str, Any]]:
    return [
        {
            "run": r.name,
            "budget_usd": format_usd(r.budget_micro_usd) if r.budget_micro_usd else None,
            "committed_usd": format_usd(r.reserved_micro_usd),
            "status": r.status,
            "used_percent": (
                f"{Decimal(r.reserved_micro_usd) * 100 / r.budget_micro_usd:.1f}" if r.budget_micro_usd else None
            ),
        }
        for r in runs
    ]


def _charts(report: Report, by_job: dict[int, list[AttemptRecord]], now: datetime, rollups: list[RollupRow]) -> None:
    """Billed per day over the whole range (days without spend at $0), per endpoint, per project."""
    by_day: dict[date, int] = defaultdict(int)
    for r in rollups:
        by_day[r.day] += r.billed_micro_usd
        report.billed_by_endpoint[r.endpoint] = report.billed_by_endpoint.get(r.endpoint, 0) + r.billed_micro_usd
        key = r.project or NO_PROJECT
        report.billed_by_project[key] = report.billed_by_project.get(key, 0) + r.billed_micro_usd
    for job in report.jobs:
        for a in by_job.get(job.id, []):
            billed = a.billed_micro_usd or 0
            by_day[a.created_at.astimezone(UTC).date()] += billed
            report.billed_by_endpoint[job.endpoint] = report.billed_by_endpoint.get(job.endpoint, 0) + billed
            key = job.project or NO_PROJECT
            report.billed_by_project[key] = report.billed_by_project.get(key, 0) + billed
    since, until = report.scope.since, report.scope.until
    first = since.astimezone(UTC).date() if since else min(by_day, default=now.date())
    last = (until - timedelta(microseconds=1)).astimezone(UTC).date() if until else now.astimezone(UTC).date()
    if last < first or (last - first).days >= MAX_CHART_DAYS:
        first, last = min(by_day, default=first), max(by_day, default=first)
    report.first_day, report.last_day = first, last
    day = first
    while day <= last:
        report.billed_by_day[day.isoformat()] = by_day.get(day, 0)
        day += timedelta(days=1)


MONEY_COLUMNS = (
    "jobs",
    "estimated_usd",
    "billed_usd",
    "retry_spend_usd",
    "waste_usd",
    "at_risk_usd",
    "unconfirmed_usd",
    "delivered_seconds",
    "cost_per_delivered_second_usd",
)
COLUMNS = MONEY_COLUMNS  # the grouped figures, as named in CSV and JSON
OUTCOME_COLUMNS = tuple(f"jobs_{s.value}" for s in JobState)


def render(report: Report, fmt: str) -> str:
    """The machine formats of the grouped report, "json" and "csv"; the table is
    `display.report_table`. CSV: a `row_type` column (group / total) keeps the total row apart,
    and each job state has its own count column."""
    if fmt == "json":
        return json.dumps(report.as_dict(), indent=2) + "\n"
    if fmt != "csv":
        raise ValueError(f"{fmt!r} is not a machine format (json, csv)")
    rows = [("group", k, v.as_dict()) for k, v in sorted(report.groups.items())]
    rows.append(("total", "TOTAL", report.total.as_dict()))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row_type", report.group_by, *MONEY_COLUMNS, *OUTCOME_COLUMNS])
    for row_type, key, d in rows:
        writer.writerow(
            [
                row_type,
                key,
                *[d[c] if d[c] is not None else "" for c in MONEY_COLUMNS],
                *[d["outcomes"].get(c.removeprefix("jobs_"), 0) for c in OUTCOME_COLUMNS],
            ]
        )
    return buf.getvalue()


# --------------------------------------------------------------------------- line items

ITEM_COLUMNS = (
    "row_type",
    "batch",
    "project",
    "job_id",
    "job_key",
    "endpoint",
    "source",
    "params",
    "tags",
    "job_state",
    "job_estimate_usd",
    "attempt",
    "request_id",
    "attempt_state",
    "reserved_usd",
    "billed_usd",
    "billed_source",
    "delivered_seconds",
    "error_type",
    "created_at",
    "submitted_at",
    "finished_at",
    "output",
)


def _usd(micro: int | None) -> str | None:
    return format_usd(micro) if micro is not None else None


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat() if when else None


def _item(job: JobRecord, a: AttemptRecord | None) -> dict[str, Any]:
    """One line: a job and one of its attempts (or none: the attempt's fields are empty)."""
    delivered = a.duration_us if a and a.state == AttemptState.SUCCEEDED and a.duration_us else None
    return {
        "row_type": "item",
        "batch": job.batch,
        "project": job.project,
        "job_id": job.id,
        "job_key": job.key,
        "endpoint": job.endpoint,
        "source": job.source,
        "params": job.params,
        "tags": list(job.tags),
        "job_state": job.state.value,
        "job_estimate_usd": format_usd(job.estimate_micro_usd),
        "attempt": a.number if a else None,
        "request_id": a.request_id if a else None,
        "attempt_state": a.state.value if a else None,
        "reserved_usd": _usd(a.reserved_micro_usd) if a else None,
        "billed_usd": _usd(a.billed_micro_usd) if a else None,
        "billed_source": a.price_source if a else None,
        "delivered_seconds": f"{Decimal(delivered) / 1_000_000:f}" if delivered else None,
        "error_type": a.error_type if a else None,
        "created_at": _iso(a.created_at if a else job.created_at),
        "submitted_at": _iso(a.submitted_at) if a else None,
        "finished_at": _iso(a.finished_at) if a else None,
        "output": job.output_path,
    }


def items(report: Report) -> Iterator[dict[str, Any]]:
    """One line per attempt in scope, in job order; a job without one has one line of its own
    (made one at a time: 100,000 jobs make 100,000 lines)."""
    by_job: dict[int, list[AttemptRecord]] = defaultdict(list)
    for a in report.attempts:
        by_job[a.job_id].append(a)
    for job in report.jobs:
        mine: list[AttemptRecord | None] = list(by_job.get(job.id, [])) or [None]
        yield from (_item(job, a) for a in mine)


def item_totals(report: Report, lines: int) -> dict[str, Any]:
    """The totals of the line items: the report's own total figures (estimates once per job)."""
    t = report.total.as_dict()
    reserved = sum(a.reserved_micro_usd or 0 for a in report.attempts)
    return {
        "row_type": "total",
        "lines": lines,
        "jobs": t["jobs"],
        "attempts": len(report.attempts),
        "job_estimate_usd": t["estimated_usd"],
        "reserved_usd": format_usd(reserved),
        "billed_usd": t["billed_usd"],
        "unconfirmed_usd": t["unconfirmed_usd"],
        "delivered_seconds": t["delivered_seconds"],
    }


def render_items(report: Report, fmt: str) -> str:
    """`report --items`: JSON {"items": [...], "totals": {...}}; CSV one line per item, then one
    line whose `row_type` is "total" (filter on it in a spreadsheet)."""
    if fmt == "json":
        lines = list(items(report))
        totals = item_totals(report, len(lines))
        return json.dumps({"scope": report.scope_dict(), "items": lines, "totals": totals}, indent=2) + "\n"
    if fmt != "csv":
        raise ValueError(f"{fmt!r} is not a line-item format (json, csv)")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(ITEM_COLUMNS)
    count = 0
    for line in items(report):
        writer.writerow([_cell(c, line[c]) for c in ITEM_COLUMNS])
        count += 1
    writer.writerow([_cell(c, item_totals(report, count).get(c)) for c in ITEM_COLUMNS])
    return buf.getvalue()


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column == "params":
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if column == "tags":
        return ";".join(value)
    return str(value)


def write_atomically(output: Path, text: str) -> None:
    """Write a report whole or not at all (`atomic.write_text`)."""
    try:
        atomic.write_text(output, text)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {shorten(str(output), 80)}: {exc.strerror}", hint="check the folder and free space"
        ) from exc
