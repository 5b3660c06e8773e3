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
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

from . import atomic
from .db.ledger import Scope, jobs_with_attempts, known_batches, runs
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
    """A report's figures, folded in a job at a time (`Report.add`) and finished with the pruned
    jobs' rollups and the charts' day range (`finish`); it keeps no job but its first `cards`."""

    group_by: str
    groups: dict[str, Line]
    total: Line
    runs: list[dict[str, Any]]
    cards: list[JobRecord] = field(default_factory=list)  # the first jobs, for the HTML contact sheet
    job_rows: int = 0  # job rows in scope (pruned jobs' too)
    batch_names: set[str] = field(default_factory=set)  # of the jobs in scope ("" for none)
    project_names: set[str] = field(default_factory=set)  # of the jobs in scope (NO_PROJECT for none)
    billed_by_day: dict[str, int] = field(default_factory=dict)  # finished: every day of the range, $0 days too
    billed_by_endpoint: dict[str, int] = field(default_factory=dict)
    billed_by_project: dict[str, int] = field(default_factory=dict)
    scope: Scope = field(default_factory=Scope)
    attempts: int = 0  # attempts in scope (their figures are in `total`)
    reserved: int = 0  # micro-USD reserved on them (the line items' total)
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

    def add(self, job: JobRecord, attempts: list[AttemptRecord], cards: int) -> None:
        """Fold one job and its attempts in scope into the figures: job-level figures go where its
        latest attempt ran (or where it was created), money where each attempt ran; a pruned
        job's job-level figures are in its rollup. Keeps the first `cards` jobs."""
        self.job_rows += 1
        if len(self.cards) < cards:
            self.cards.append(job)
        self.batch_names.add(job.batch or "")
        project = job.project or NO_PROJECT
        self.project_names.add(project)
        if not job.pruned_at:
            for line in self._lines(job, attempts[-1].created_at if attempts else None):
                line.add_job(job)
        for a in attempts:
            for line in self._lines(job, a.created_at):
                line.add_attempt(a)
            billed = a.billed_micro_usd or 0
            day = a.created_at.astimezone(UTC).date().isoformat()
            self.billed_by_day[day] = self.billed_by_day.get(day, 0) + billed
            self.billed_by_endpoint[job.endpoint] = self.billed_by_endpoint.get(job.endpoint, 0) + billed
            self.billed_by_project[project] = self.billed_by_project.get(project, 0) + billed
            self.attempts += 1
            self.reserved += a.reserved_micro_usd or 0

    def _lines(self, job: JobRecord, when: datetime | None) -> list[Line]:
        """The lines a job's figures go to, then the total."""
        return [*(self.line(k) for k in _keys(self.group_by, job, when)), self.total]

    def line(self, key: str) -> Line:
        """The group's line, made when first needed."""
        return self.groups.get(key) or self.groups.setdefault(key, Line())


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


def check(repo: Repository, scope: Scope) -> None:
    """A batch asked for by name that does not exist is an error."""
    known = known_batches(repo.engine, scope)
    missing = [b for b in scope.batches if b not in known]
    if missing:
        names = ", ".join(shown(b) for b in missing[:MAX_NAMES_SHOWN])
        more = f" and {len(missing) - MAX_NAMES_SHOWN} more" if len(missing) > MAX_NAMES_SHOWN else ""
        raise ConfigError(f"no batch named {names}{more}", hint="`batch-runner status` lists the batches")


def build(repo: Repository, scope: Scope, *, group_by: str, now: datetime | None = None, cards: int = 0) -> Report:
    """The report over `scope` (`check`ed first), folded a job at a time as the ledger streams by
    (never held whole), keeping its first `cards` jobs."""
    check(repo, scope)
    report = start(repo, scope, group_by)
    for _ in fold(repo, report, cards):
        pass
    finish(report, now or datetime.now(UTC), rollup_totals(repo.engine, scope))
    return report


def start(repo: Repository, scope: Scope, group_by: str) -> Report:
    """A report with no job folded in yet: its runs only."""
    return Report(group_by, {}, Line(), _budgets(runs(repo.engine, scope)), scope=scope)


def fold(repo: Repository, report: Report, cards: int = 0) -> Iterator[tuple[JobRecord, list[AttemptRecord]]]:
    """Stream the ledger into `report`, handing on each job and its attempts once folded in."""
    with closing(jobs_with_attempts(repo.engine, report.scope)) as stream:
        for job, attempts in stream:
            report.add(job, attempts, cards)
            yield job, attempts


def finish(report: Report, now: datetime, rollups: list[RollupRow]) -> None:
    """Add the pruned jobs' rollups and draw the charts' figures."""
    for r in rollups:
        for line in [report.line(_rollup_key(report.group_by, r)), report.total]:
            line.add_rollup(r)
    _charts(report, now, rollups)


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


def _charts(report: Report, now: datetime, rollups: list[RollupRow]) -> None:
    """Billed per day over the whole range (days without spend at $0), per endpoint, per project:
    the pruned jobs' rollups, then the attempts' sums `Report.add` made."""
    by_day: dict[date, int] = defaultdict(int)
    by_endpoint: dict[str, int] = {}
    by_project: dict[str, int] = {}
    for r in rollups:
        by_day[r.day] += r.billed_micro_usd
        by_endpoint[r.endpoint] = by_endpoint.get(r.endpoint, 0) + r.billed_micro_usd
        key = r.project or NO_PROJECT
        by_project[key] = by_project.get(key, 0) + r.billed_micro_usd
    for iso, billed in report.billed_by_day.items():
        by_day[date.fromisoformat(iso)] += billed
    for folded, into in ((report.billed_by_endpoint, by_endpoint), (report.billed_by_project, by_project)):
        for key, billed in folded.items():
            into[key] = into.get(key, 0) + billed
    report.billed_by_endpoint, report.billed_by_project = by_endpoint, by_project
    first, last = day_range(report.scope, min(by_day, default=None), max(by_day, default=None), now)
    report.first_day, report.last_day = first, last
    report.billed_by_day = {}
    day = first
    while day <= last:
        report.billed_by_day[day.isoformat()] = by_day.get(day, 0)
        day += timedelta(days=1)


def day_range(scope: Scope, lo: date | None, hi: date | None, now: datetime) -> tuple[date, date]:
    """The days a report covers: the window's, else the first day with spend up to today; the
    days with spend (`lo` to `hi`) when the window is empty or longer than MAX_CHART_DAYS."""
    first = scope.since.astimezone(UTC).date() if scope.since else (lo or now.date())
    last = (
        (scope.until - timedelta(microseconds=1)).astimezone(UTC).date() if scope.until else now.astimezone(UTC).date()
    )
    if last < first or (last - first).days >= MAX_CHART_DAYS:
        first, last = lo or first, hi or first
    return first, last


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


def write_atomically(output: Path, text: str | Iterable[str]) -> None:
    """Write a report, text or pieces of text, whole or not at all (`atomic.writing`)."""
    try:
        with atomic.writing(output) as fh:
            fh.writelines([text] if isinstance(text, str) else text)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {shorten(str(output), 80)}: {exc.strerror}", hint="check the folder and free space"
        ) from exc
