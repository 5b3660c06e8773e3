"""Retention in SQL: finished jobs' attempts and events past a horizon move into `rollups` (the
report's figures per UTC day, batch, project, endpoint), a few jobs per transaction so live
workers are never blocked for long; old probe-cache rows go too. Job rows always stay."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import Engine, and_, delete, exists, func, insert, not_, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ..domain import PENDING_BILLING_EVENTS, PROVISIONAL, TERMINAL_STATES, AttemptState
from .engine import write_lock
from .ledger import Scope
from .models import Attempt, Batch, Event, Job, Lock, Output, Probe, Rollup, table, utcnow
from .plumbing import fail, reading, transaction

A, J, B, E, OUT, P, RU = (table(m) for m in (Attempt, Job, Batch, Event, Output, Probe, Rollup))
#: Job ids per transaction (so at most this many jobs): with their attempts and events, about 1,000 rows.
PRUNE_JOBS_PER_TX = 100
#: Probe-cache rows (and events of jobs that never ran) deleted per transaction.
PRUNE_ROWS_PER_TX = 1000
OPEN_ATTEMPTS = [
    s.value
    for s in (
        AttemptState.PREPARING,
        AttemptState.SENDING,
        AttemptState.SUBMITTED,
        AttemptState.IN_PROGRESS,
        AttemptState.DOWNLOADING,
        AttemptState.UNCERTAIN,
    )
]
FINISHED = [s.value for s in TERMINAL_STATES]


@dataclass
class PruneCounts:
    """What a prune removed (or, with --dry-run, would remove)."""

    jobs: int = 0  # jobs whose attempts and events went into the rollups
    attempts: int = 0
    events: int = 0
    probes: int = 0

    def add(self, other: PruneCounts) -> None:
        self.jobs += other.jobs
        self.attempts += other.attempts
        self.events += other.events
        self.probes += other.probes


@dataclass
class RollupRow:
    """One rollup: the report's figures of pruned jobs for one day, batch, project and endpoint."""

    day: date
    batch_id: int
    project: str | None
    endpoint: str
    batch: str = ""
    jobs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    estimated_micro_usd: int = 0
    billed_micro_usd: int = 0
    retry_spend_micro_usd: int = 0
    waste_micro_usd: int = 0
    delivered_us: int = 0

    @property
    def key(self) -> tuple[date, int, str | None, str]:
        return (self.day, self.batch_id, self.project, self.endpoint)


def _prunable(horizon: datetime) -> list[Any]:
    """Finished jobs, not held, last changed before the horizon, with attempts that are all
    settled before it: none open, none still waiting for fal's bill (a provisional or pending
    figure that `resolve` may yet replace)."""
    unsettled = or_(
        A.c.created_at >= horizon,
        A.c.finished_at >= horizon,
        A.c.state.in_(OPEN_ATTEMPTS),
        A.c.price_source.startswith(PROVISIONAL),
        A.c.price_source == PENDING_BILLING_EVENTS,
    )
    return [
        J.c.state.in_(FINISHED),
        J.c.pruned_at.is_(None),
        J.c.lease_owner.is_(None),
        J.c.updated_at < horizon,
        exists().where(A.c.job_id == J.c.id),
        not_(exists().where(A.c.job_id == J.c.id, unsettled)),
    ]


def _never_ran(horizon: datetime) -> list[Any]:
    """Finished jobs without attempts whose events are past the horizon: only events go."""
    return [
        J.c.state.in_(FINISHED),
        J.c.updated_at < horizon,
        not_(exists().where(A.c.job_id == J.c.id)),
    ]


def count(engine: Engine, horizon: datetime) -> PruneCounts:
    """What `prune` would remove now, changing nothing (--dry-run)."""

    def go(conn: Connection) -> PruneCounts:
        jobs = select(J.c.id).where(*_prunable(horizon))
        quiet = select(J.c.id).where(*_never_ran(horizon))
        return PruneCounts(
            jobs=conn.execute(select(func.count()).select_from(jobs.subquery())).scalar_one(),
            attempts=conn.execute(select(func.count()).where(A.c.job_id.in_(jobs))).scalar_one(),
            events=conn.execute(
                select(func.count()).where(or_(E.c.job_id.in_(jobs), and_(E.c.job_id.in_(quiet), E.c.at < horizon)))
            ).scalar_one(),
            probes=conn.execute(select(func.count()).where(P.c.probed_at < horizon)).scalar_one(),
        )

    return reading(engine, "counting what prune would remove", go)


def prune(engine: Engine, horizon: datetime, *, jobs_per_tx: int = PRUNE_JOBS_PER_TX) -> PruneCounts:
    """Prune in short transactions, one per `jobs_per_tx` job ids (so at most that many jobs each);
    each job's rollup is written in the transaction that deletes its attempts and events."""
    total = PruneCounts()
    last = reading(engine, "reading the last job id", lambda conn: conn.execute(select(func.max(J.c.id))).scalar())
    # a window of job ids per transaction: each one's query is a short primary-key range, never a
    # scan of every job (which made the whole prune quadratic on PostgreSQL)
    for first in range(1, (last or 0) + 1, jobs_per_tx):
        window = (first, first + jobs_per_tx)
        total.add(transaction(engine, "pruning old attempts and events", _prune_some, horizon, window))
    for what, fn in (("events", _prune_quiet_events), ("probes", _prune_probes)):
        while True:
            n = transaction(engine, f"pruning old {what}", fn, horizon)
            setattr(total, what, getattr(total, what) + n)
            if n < PRUNE_ROWS_PER_TX:
                break
    return total


def _prune_some(conn: Connection, horizon: datetime, window: tuple[int, int]) -> PruneCounts:
    """The prunable jobs with ids in [first, end) of `window`."""
    conn.execute(update(Lock).where(Lock.name == "prune").values(counter=Lock.counter + 1))  # one prune at a time
    pick = select(J.c.id).where(J.c.id >= window[0], J.c.id < window[1], *_prunable(horizon)).order_by(J.c.id)
    if conn.dialect.name == "postgresql":
        pick = pick.with_for_update(of=J, skip_locked=True)  # a job a worker or `retry` holds waits for next time
    ids = list(conn.execute(pick).scalars())
    if not ids:
        return PruneCounts()
    jobs = conn.execute(select(J).where(J.c.id.in_(ids))).mappings().all()
    attempts = (
        conn.execute(
            select(A, OUT.c.duration_us)
            .select_from(A.outerjoin(OUT, OUT.c.attempt_id == A.c.id))
            .where(A.c.job_id.in_(ids))
            .order_by(A.c.id)
        )
        .mappings()
        .all()
    )
    _merge(conn, _rollups(jobs, attempts))
    attempt_ids = [a["id"] for a in attempts]
    # by job id, whose columns are indexed (attempt_id is not): a job's events and outputs name its own attempts
    events = conn.execute(delete(E).where(E.c.job_id.in_(ids))).rowcount
    conn.execute(update(OUT).where(OUT.c.job_id.in_(ids), OUT.c.attempt_id.is_not(None)).values(attempt_id=None))
    conn.execute(delete(A).where(A.c.id.in_(attempt_ids)))
    conn.execute(update(J).where(J.c.id.in_(ids)).values(pruned_at=utcnow()))
    return PruneCounts(jobs=len(ids), attempts=len(attempt_ids), events=events)


def _prune_quiet_events(conn: Connection, horizon: datetime) -> int:
    quiet = select(J.c.id).where(*_never_ran(horizon))
    ids = select(E.c.id).where(E.c.job_id.in_(quiet), E.c.at < horizon).limit(PRUNE_ROWS_PER_TX)
    return int(conn.execute(delete(E).where(E.c.id.in_(list(conn.execute(ids).scalars())))).rowcount)


def _prune_probes(conn: Connection, horizon: datetime) -> int:
    ids = list(conn.execute(select(P.c.id).where(P.c.probed_at < horizon).limit(PRUNE_ROWS_PER_TX)).scalars())
    return int(conn.execute(delete(P).where(P.c.id.in_(ids))).rowcount) if ids else 0


def _day(when: datetime) -> date:
    return when.astimezone(UTC).date() if when.tzinfo else when.date()


def _rollups(jobs: Iterable[Any], attempts: Iterable[Any]) -> dict[tuple[date, int, str | None, str], RollupRow]:
    """The figures `report` would show for these jobs, by the same rules (reports.Line): money
    by the day of each attempt, the job, its outcome and estimate by the day of its last attempt."""
    by_job: dict[int, list[Any]] = defaultdict(list)
    for a in attempts:
        by_job[a["job_id"]].append(a)
    rows: dict[tuple[date, int, str | None, str], RollupRow] = {}

    def row(job: Any, when: datetime) -> RollupRow:
        r = RollupRow(_day(when), job["batch_id"], job["project"], job["endpoint"])
        return rows.setdefault(r.key, r)

    for job in jobs:
        mine = by_job[job["id"]]
        last = row(job, mine[-1]["created_at"])
        last.jobs += 1
        last.outcomes[job["state"]] += 1
        last.estimated_micro_usd += job["estimate_micro_usd"]
        for a in mine:
            r, billed = row(job, a["created_at"]), a["billed_micro_usd"] or 0
            r.attempts += 1
            r.billed_micro_usd += billed
            r.retry_spend_micro_usd += billed if a["number"] > 1 else 0
            r.waste_micro_usd += billed if a["state"] != AttemptState.SUCCEEDED.value else 0
            if a["state"] == AttemptState.SUCCEEDED.value and a["duration_us"]:
                r.delivered_us += a["duration_us"]
    return rows


FIGURES: tuple[str, ...] = (
    "jobs",
    "attempts",
    "estimated_micro_usd",
    "billed_micro_usd",
    "retry_spend_micro_usd",
    "waste_micro_usd",
    "delivered_us",
)


def _merge(conn: Connection, rows: dict[tuple[date, int, str | None, str], RollupRow]) -> None:
    """Add each row to the stored rollup with its key, or store it as a new one."""
    for r in rows.values():
        same = [RU.c.day == r.day, RU.c.batch_id == r.batch_id, RU.c.endpoint == r.endpoint]
        same.append(RU.c.project.is_(None) if r.project is None else RU.c.project == r.project)
        old = conn.execute(select(RU).where(*same)).mappings().first()
        if old is None:
            values = {f: getattr(r, f) for f in FIGURES}
            conn.execute(
                insert(RU).values(
                    day=r.day,
                    batch_id=r.batch_id,
                    project=r.project,
                    endpoint=r.endpoint,
                    outcomes_json=json.dumps(dict(sorted(r.outcomes.items()))),
                    updated_at=utcnow(),
                    **values,
                )
            )
            continue
        outcomes = Counter(json.loads(old["outcomes_json"])) + r.outcomes
        added = {f: old[f] + getattr(r, f) for f in FIGURES}
        conn.execute(
            update(RU)
            .where(RU.c.id == old["id"])
            .values(outcomes_json=json.dumps(dict(sorted(outcomes.items()))), updated_at=utcnow(), **added)
        )


def rollup_totals(engine: Engine, scope: Scope) -> list[RollupRow]:
    """The rollups a report over `scope` adds. Days count whole: a day is in [since, until)
    when its first moment is. Rollups keep no tags, so a scope that names tags gets none."""
    if scope.tags:
        return []
    where: list[Any] = []
    if scope.batches:
        where.append(B.c.name.in_(scope.batches))
    if scope.projects:
        where.append(RU.c.project.in_(scope.projects))
    if scope.since is not None:
        where.append(RU.c.day >= _first_whole_day(scope.since))
    if scope.until is not None:
        where.append(RU.c.day < _first_whole_day(scope.until))

    def go(conn: Connection) -> list[RollupRow]:
        stmt = select(RU, B.c.name.label("batch")).select_from(RU.join(B, B.c.id == RU.c.batch_id)).where(*where)
        out = []
        for m in conn.execute(stmt.order_by(RU.c.day, RU.c.id)).mappings():
            r = RollupRow(m["day"], m["batch_id"], m["project"], m["endpoint"], batch=m["batch"])
            r.outcomes = Counter(json.loads(m["outcomes_json"]))
            for f in FIGURES:
                setattr(r, f, m[f])
            out.append(r)
        return out

    return reading(engine, "reading the rollups", go)


def _first_whole_day(moment: datetime) -> date:
    """The first UTC day that starts at or after `moment`."""
    moment = moment.astimezone(UTC)
    day = moment.date()
    return day if moment.time() == time(0) else date.fromordinal(day.toordinal() + 1)


def vacuum(engine: Engine) -> bool:
    """Compact a SQLite file after a prune (returns True); PostgreSQL's autovacuum does it there."""
    if engine.dialect.name != "sqlite":
        return False
    try:
        with write_lock(engine), engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM")
    except SQLAlchemyError as exc:
        raise fail(engine, "compacting the database (VACUUM)", exc) from exc
    return True
