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
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from .db.ledger import ledger
from .db.repo import Repository
from .domain import PROVISIONAL, AttemptState, format_usd
from .records import AttemptRecord, JobRecord

GROUPINGS = ("endpoint", "resolution", "tag", "day", "batch")
FORMATS = ("table", "csv", "json", "html")
OPEN_ATTEMPTS = {
    AttemptState.SENDING,
    AttemptState.SUBMITTED,
    AttemptState.IN_PROGRESS,
    AttemptState.DOWNLOADING,
    AttemptState.UNCERTAIN,
}


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
    jobs: list[JobRecord] = field(default_factory=list)  # for the HTML contact sheet
    billed_by_day: dict[str, int] = field(default_factory=dict)
    billed_by_endpoint: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "group_by": self.group_by,
            "groups": {k: v.as_dict() for k, v in sorted(self.groups.items())},
            "total": self.total.as_dict(),
            "budgets": self.runs,
        }


def _keys(group_by: str, job: JobRecord, when: datetime | None) -> list[str]:
    if group_by == "endpoint":
        return [job.endpoint]
    if group_by == "resolution":
        return [str(job.params.get("resolution", "n/a"))]
    if group_by == "tag":
        return list(job.tags) or ["(untagged)"]
    if group_by == "batch":
        return [job.batch or ""]
    return [(when or job.created_at).date().isoformat()]


def build(
    repo: Repository, *, batches: list[str] | None, since: datetime | None, until: datetime | None, group_by: str
) -> Report:
    jobs, attempts, runs = ledger(repo.engine, batches, since, until)
    by_job: dict[int, list[AttemptRecord]] = defaultdict(list)
    for a in attempts:
        by_job[a.job_id].append(a)
    groups: dict[str, Line] = defaultdict(Line)
    total = Line()
    for job in jobs:
        mine = by_job.get(job.id, [])
        last = mine[-1].created_at if mine else None
        # job-level figures go where its latest attempt ran (or where it was created)
        for line in [groups[k] for k in _keys(group_by, job, last)] + [total]:
            line.jobs += 1
            line.outcomes[job.state.value] += 1
            line.estimated += job.estimate_micro_usd
        for a in mine:  # money goes where each attempt ran
            for line in [groups[k] for k in _keys(group_by, job, a.created_at)] + [total]:
                billed = a.billed_micro_usd or 0
                line.billed += billed
                if a.number > 1:
                    line.retry_spend += billed
                if billed and a.state != AttemptState.SUCCEEDED:
                    line.waste += billed
                if a.state in OPEN_ATTEMPTS:
                    line.at_risk += a.reserved_micro_usd or 0
                if (a.price_source or "").startswith(PROVISIONAL):
                    line.unconfirmed += billed
                if a.state == AttemptState.SUCCEEDED and a.duration_us:
                    line.delivered_us += a.duration_us
    by_day: dict[str, int] = defaultdict(int)
    by_endpoint: dict[str, int] = defaultdict(int)
    for job in jobs:
        for a in by_job.get(job.id, []):
            by_day[_keys("day", job, a.created_at)[0]] += a.billed_micro_usd or 0
            by_endpoint[job.endpoint] += a.billed_micro_usd or 0
    budgets = [
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
    return Report(group_by, dict(groups), total, budgets, jobs, dict(by_day), dict(by_endpoint))


COLUMNS = (
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


def render(report: Report, fmt: str) -> str:
    """The machine formats, "json" and "csv"; the table is `display.report_table`."""
    if fmt == "json":
        return json.dumps(report.as_dict(), indent=2) + "\n"
    if fmt != "csv":
        raise ValueError(f"{fmt!r} is not a machine format (json, csv)")
    rows = [(k, v.as_dict()) for k, v in sorted(report.groups.items())] + [("TOTAL", report.total.as_dict())]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([report.group_by, *COLUMNS, "outcomes"])
    for key, d in rows:
        writer.writerow(
            [
                key,
                *[d[c] if d[c] is not None else "" for c in COLUMNS],
                ";".join(f"{s}={n}" for s, n in d["outcomes"].items()),
            ]
        )
    return buf.getvalue()
