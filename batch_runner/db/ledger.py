"""The ledger in SQL: every attempt with its job, batch, output and money, for reports."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection

from ..records import AttemptRecord, JobRecord, RunRecord
from .models import Attempt, Batch, Job, Output, Run, table
from .plumbing import reading

A, J, B, OUT, R = table(Attempt), table(Job), table(Batch), table(Output), table(Run)


def ledger(
    engine: Engine, batches: Sequence[str] | None, since: datetime | None, until: datetime | None
) -> tuple[list[JobRecord], list[AttemptRecord], list[RunRecord]]:
    """(jobs, attempts, runs) in scope: jobs of the batches (those with an attempt in the
    window when one is given), their attempts in the window, and the runs started in it."""
    window = []
    if since is not None:
        window.append(A.c.created_at >= since)
    if until is not None:
        window.append(A.c.created_at < until)
    scope = [B.c.name.in_(list(batches))] if batches else []

    def go(conn: Connection) -> tuple[list[JobRecord], list[AttemptRecord], list[RunRecord]]:
        attempts = _attempts(conn, [*scope, *window])
        job_filter = [J.c.id.in_({a.job_id for a in attempts})] if window else []
        jobs = [
            JobRecord.from_row(r)
            for r in conn.execute(
                select(J, B.c.name.label("batch"))
                .select_from(J.join(B, B.c.id == J.c.batch_id))
                .where(*scope, *job_filter)
                .order_by(J.c.id)
            ).mappings()
        ]
        run_window = [R.c.started_at >= since] if since is not None else []
        if until is not None:
            run_window.append(R.c.started_at < until)
        runs = [RunRecord.from_row(r) for r in conn.execute(select(R).where(*run_window).order_by(R.c.id)).mappings()]
        return jobs, attempts, runs

    return reading(engine, "reading the ledger", go)


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
