"""The ledger in SQL: every attempt with its job, batch, output and money, for reports, narrowed
to a scope (batches, projects, tags, a time window) in the query itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, cast, column, exists, func, literal, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection

from ..records import AttemptRecord, JobRecord, RunRecord
from .models import Attempt, Batch, Job, Output, Run, table
from .plumbing import reading

A, J, B, OUT, R = table(Attempt), table(Job), table(Batch), table(Output), table(Run)


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


@dataclass(frozen=True)
class Ledger:
    """The rows in scope, and which of the batches asked for exist at all."""

    jobs: list[JobRecord]
    attempts: list[AttemptRecord]
    runs: list[RunRecord]
    known_batches: frozenset[str]


def ledger(engine: Engine, scope: Scope) -> Ledger:
    """Jobs in scope (those with an attempt in the window when one is given), their attempts in
    the window, and the runs started in the window that worked on them (every run in the window
    when the scope names no batch, project or tag)."""
    window = []
    if scope.since is not None:
        window.append(A.c.created_at >= scope.since)
    if scope.until is not None:
        window.append(A.c.created_at < scope.until)
    windowed = bool(window)

    def go(conn: Connection) -> Ledger:
        where = _where(conn.dialect.name, scope)
        attempts = _attempts(conn, [*where, *window])
        job_filter = [J.c.id.in_({a.job_id for a in attempts})] if windowed else []
        jobs = [
            JobRecord.from_row(r)
            for r in conn.execute(
                select(J, B.c.name.label("batch"))
                .select_from(J.join(B, B.c.id == J.c.batch_id))
                .where(*where, *job_filter)
                .order_by(J.c.id)
            ).mappings()
        ]
        known = (
            frozenset(conn.execute(select(B.c.name).where(B.c.name.in_(scope.batches))).scalars())
            if scope.batches
            else frozenset()
        )
        return Ledger(jobs, attempts, _runs(conn, scope, attempts), known)

    return reading(engine, "reading the ledger", go)


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


def _runs(conn: Connection, scope: Scope, attempts: list[AttemptRecord]) -> list[RunRecord]:
    where: list[Any] = []
    if scope.since is not None:
        where.append(R.c.started_at >= scope.since)
    if scope.until is not None:
        where.append(R.c.started_at < scope.until)
    if scope.narrowed:
        worked = {i for a in attempts for i in (a.run_id, a.settled_run_id) if i is not None}
        named = select(B.c.id).where(B.c.name.in_(scope.batches)) if scope.batches else None
        where.append(or_(R.c.id.in_(worked), R.c.batch_id.in_(named)) if named is not None else R.c.id.in_(worked))
    return [RunRecord.from_row(r) for r in conn.execute(select(R).where(*where).order_by(R.c.id)).mappings()]


def _attempts(conn: Connection, where: list[Any]) -> list[AttemptRecord]:
    """Attempts with their job's endpoint and the delivered output's duration."""
    stmt = (
        select(A, J.c.endpoint, OUT.c.duration_us)
        .select_from(
            A.join(J, J.c.id == A.c.job_id).join(B, B.c.id == J.c.batch_id).outerjoin(OUT, OUT.c.attempt_id == A.c.id)
        )
        .where(*where)
        .order_by(A.c.id)
    )
    return [AttemptRecord.from_row(r) for r in conn.execute(stmt).mappings()]
