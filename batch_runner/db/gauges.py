"""The figures a metrics scrape reads from the database: jobs by state, work in flight, the oldest
queued job, and a run's spend against each of its budgets. One read transaction per scrape."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import Connection

from ..domain import IN_FLIGHT_STATES, JobState
from .models import Attempt, Batch, Job, Run, table, utcnow
from .plumbing import reading

J, A, R, B = table(Job), table(Attempt), table(Run), table(Batch)
DAY = timedelta(hours=24)


@dataclass(frozen=True)
class Spend:
    """Money against one budget, in micro-USD: the limit (None: no such budget), the estimates of
    the attempts it covers, what they reserved while open, and what fal billed."""

    budget: str  # "run", "batch_per_day", "account_per_day"
    limit_micro_usd: int | None
    estimated_micro_usd: int
    reserved_micro_usd: int
    billed_micro_usd: int


@dataclass(frozen=True)
class Gauges:
    jobs_by_state: dict[str, int]  # every job in the database (bounded: one series per state)
    in_flight: int
    oldest_queued_age_s: float | None
    spend: tuple[Spend, ...]


def read_gauges(engine: Engine, run_name: str | None, account_daily_micro_usd: int | None) -> Gauges:
    """The gauges now; the run's spend once `run_name` names a run in the database."""

    def go(conn: Connection) -> Gauges:
        now = utcnow()
        states = {str(s): int(n) for s, n in conn.execute(select(J.c.state, func.count()).group_by(J.c.state))}
        oldest = conn.execute(
            select(J.c.updated_at).where(J.c.state == JobState.QUEUED.value).order_by(J.c.updated_at).limit(1)
        ).scalar()
        spend: list[Spend] = []
        run = conn.execute(select(R).where(R.c.name == run_name)).mappings().first() if run_name else None
        if run is not None:
            spend.append(_run_spend(conn, run))
            if run["daily_budget_micro_usd"] is not None and run["batch_id"] is not None:
                where = [A.c.created_at >= now - DAY, A.c.batch_id == run["batch_id"]]
                spend.append(_window("batch_per_day", run["daily_budget_micro_usd"], conn, where))
        if account_daily_micro_usd is not None:
            spend.append(_window("account_per_day", account_daily_micro_usd, conn, [A.c.created_at >= now - DAY]))
        return Gauges(
            jobs_by_state=states,
            in_flight=sum(n for s, n in states.items() if s in {x.value for x in IN_FLIGHT_STATES}),
            oldest_queued_age_s=max(0.0, (now - _aware(oldest)).total_seconds()) if oldest is not None else None,
            spend=tuple(spend),
        )

    return reading(engine, "reading metrics", go)


def _run_spend(conn: Connection, run: Any) -> Spend:
    """A run: the estimates of its attempts, what it holds reserved, what its settled attempts were billed."""
    estimated = conn.execute(
        select(func.coalesce(func.sum(J.c.estimate_micro_usd), 0))
        .select_from(A.join(J, J.c.id == A.c.job_id))
        .where(A.c.run_id == run["id"])
    ).scalar_one()
    billed = conn.execute(
        select(func.coalesce(func.sum(A.c.billed_micro_usd), 0)).where(A.c.settled_run_id == run["id"])
    ).scalar_one()
    return Spend("run", run["budget_micro_usd"], int(estimated), int(run["reserved_micro_usd"]), int(billed))


def _window(name: str, limit: int, conn: Connection, where: list[Any]) -> Spend:
    """A rolling-24 h budget: its attempts' estimates, what is committed (billed, else reserved,
    as the claim counts it) and what was billed."""
    committed = func.coalesce(A.c.billed_micro_usd, A.c.reserved_micro_usd, 0)
    row = conn.execute(
        select(
            func.coalesce(func.sum(J.c.estimate_micro_usd), 0),
            func.coalesce(func.sum(committed), 0),
            func.coalesce(func.sum(A.c.billed_micro_usd), 0),
        )
        .select_from(A.join(J, J.c.id == A.c.job_id))
        .where(*where)
    ).one()
    return Spend(name, limit, int(row[0]), int(row[1]), int(row[2]))


def _aware(at: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes."""
    from datetime import UTC

    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
