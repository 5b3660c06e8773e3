"""The ledger in SQL: every attempt with its job, batch, output and money, for reports, narrowed
to a scope (batches, projects, tags, a time window) in the query itself, and streamed a job at a
time in job order (a 100,000-job batch is never held whole)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine, Select, and_, cast, column, exists, func, literal, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ..records import AttemptRecord, JobRecord, RunRecord
from .models import Attempt, Batch, Job, Output, Run, table
from .plumbing import fail, reading

A, J, B, OUT, R = table(Attempt), table(Job), table(Batch), table(Output), table(Run)
STREAM_ROWS = 1000  # rows fetched at a time (a server-side cursor on PostgreSQL)


@dataclass(frozen=True)
class Scope:
    """What a report covers: any of these batches, projects and tags (empty: all), and attempts
    made in [since, until)."""

    batches: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None

    @property
    def narrowed(self) -> bool:
        return bool(self.batches or self.projects or self.tags)

    @property
    def window(self) -> list[Any]:
        """The attempts' time-window conditions (none when no time is given)."""
        return self.between(A.c.created_at)

    def between(self, when: Any) -> list[Any]:
        """The conditions that put the time column `when` in [since, until)."""
        window = []
        if self.since is not None:
            window.append(when >= self.since)
        if self.until is not None:
            window.append(when < self.until)
        return window


def known_batches(engine: Engine, scope: Scope) -> frozenset[str]:
    """Which of the batches the scope names exist at all."""
    if not scope.batches:
        return frozenset()
    stmt = select(B.c.name).where(B.c.name.in_(scope.batches))
    return reading(engine, "reading the ledger", lambda conn: frozenset(conn.execute(stmt).scalars()))


def jobs_with_attempts(engine: Engine, scope: Scope) -> Generator[tuple[JobRecord, list[AttemptRecord]], None, None]:
    """Each job in scope with its attempts (in id order), in job id order: every job of the scope,
    or, when a window is given, those with an attempt in it and only those attempts. One query,
    read STREAM_ROWS rows at a time; close the iterator (or read it to the end) to free its
    connection."""
    job_names = [c.name for c in J.c] + ["batch"]
    attempt_names = [c.name for c in A.c] + ["endpoint", "duration_us"]
    j_id, split, a_id = job_names.index("id"), len(job_names), len(job_names) + attempt_names.index("id")
    try:
        with engine.connect() as conn:
            rows = conn.execution_options(yield_per=STREAM_ROWS).execute(_joined(conn.dialect.name, scope))
            job: JobRecord | None = None
            mine: list[AttemptRecord] = []
            for row in rows:
                if job is None or row[j_id] != job.id:
                    if job is not None:
                        yield job, mine
                    job, mine = JobRecord.from_row(dict(zip(job_names, row[:split], strict=True))), []
                if row[a_id] is not None:
                    mine.append(AttemptRecord.from_row(dict(zip(attempt_names, row[split:], strict=True))))
            if job is not None:
                yield job, mine
    except SQLAlchemyError as exc:
        raise fail(engine, "reading the ledger", exc) from exc


def _joined(dialect: str, scope: Scope) -> Select[Any]:
    """Jobs (with their batch's name) joined with their attempts (with the job's endpoint and the
    delivered output's duration), ordered by job, then attempt: the job's columns first (its id
    leading), then the attempt's, as `jobs_with_attempts` reads them."""
    window = scope.window
    on = and_(A.c.job_id == J.c.id, *window)
    jobs = J.join(B, B.c.id == J.c.batch_id)
    joined = jobs.join(A, on) if window else jobs.outerjoin(A, on)
    return (
        select(
            *J.c,
            B.c.name,
            *A.c,
            J.c.endpoint.label("attempt_endpoint"),  # a label of its own: never merged with the job's
            OUT.c.duration_us,
        )
        .select_from(joined.outerjoin(OUT, OUT.c.attempt_id == A.c.id))
        .where(*_where(dialect, scope))
        .order_by(J.c.id, A.c.id)
    )


def _where(dialect: str, scope: Scope) -> list[Any]:
    """The scope's batch, project and tag conditions over jobs joined with batches."""
    where: list[Any] = []
    if scope.batches:
        where.append(B.c.name.in_(scope.batches))
    if scope.projects:
        where.append(J.c.project.in_(scope.projects))
    if scope.tags:
        where.append(or_(*(_has_tag(dialect, t) for t in scope.tags)))
    return where


def _has_tag(dialect: str, tag: str) -> Any:
    """The job's tag list (a JSON array in tags_json) holds exactly this tag."""
    if dialect == "postgresql":
        return cast(J.c.tags_json, JSONB).contains([tag])
    each = func.json_each(J.c.tags_json).table_valued("value")
    return exists(select(literal(1)).select_from(each).where(column("value") == tag))


def runs(engine: Engine, scope: Scope) -> list[RunRecord]:
    """The runs started in the window that worked on attempts in scope (or belong to a batch the
    scope names); every run started in the window when the scope names no batch, project or tag."""

    def go(conn: Connection) -> list[RunRecord]:
        where = scope.between(R.c.started_at)
        if scope.narrowed:
            in_scope = [*_where(conn.dialect.name, scope), *scope.window]
            worked = [
                R.c.id.in_(select(run_id).select_from(_attempts_from()).where(*in_scope, run_id.is_not(None)))
                for run_id in (A.c.run_id, A.c.settled_run_id)
            ]
            if scope.batches:
                worked.append(R.c.batch_id.in_(select(B.c.id).where(B.c.name.in_(scope.batches))))
            where.append(or_(*worked))
        stmt = select(R).where(*where).order_by(R.c.id)
        return [RunRecord.from_row(r) for r in conn.execute(stmt).mappings()]

    return reading(engine, "reading the ledger", go)


def _attempts_from() -> Any:
    return A.join(J, J.c.id == A.c.job_id).join(B, B.c.id == J.c.batch_id)


def attempts_in_scope(engine: Engine, scope: Scope) -> list[AttemptRecord]:
    """The attempts in scope, in id order, with their job's endpoint and the delivered output's
    duration (for `reconcile`, over a few days)."""

    def go(conn: Connection) -> list[AttemptRecord]:
        stmt = (
            select(A, J.c.endpoint, OUT.c.duration_us)
            .select_from(_attempts_from().outerjoin(OUT, OUT.c.attempt_id == A.c.id))
            .where(*_where(conn.dialect.name, scope), *scope.window)
            .order_by(A.c.id)
        )
        return [AttemptRecord.from_row(r) for r in conn.execute(stmt).mappings()]

    return reading(engine, "reading the ledger", go)


def attempt_days(engine: Engine, scope: Scope) -> tuple[date | None, date | None]:
    """The first and last UTC day an attempt in scope was made on (None, None: no attempt)."""

    def go(conn: Connection) -> tuple[date | None, date | None]:
        stmt = (
            select(func.min(A.c.created_at), func.max(A.c.created_at))
            .select_from(_attempts_from())
            .where(*_where(conn.dialect.name, scope), *scope.window)
        )
        lo, hi = conn.execute(stmt).one()
        return (lo.astimezone(UTC).date() if lo else None, hi.astimezone(UTC).date() if hi else None)

    return reading(engine, "reading the ledger", go)
