"""The ledger in SQL: every attempt with its job, batch, output and money, for reports."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection

from .models import Attempt, Batch, Job, Output, Run, table
from .plumbing import reading

A, J, B, OUT, R = table(Attempt), table(Job), table(Batch), table(Output), table(Run)


def ledger(
    engine: Engine, batches: Sequence[str] | None, since: datetime | None, until: datetime | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(jobs, attempts, runs) in scope: jobs of the batches (those with an attempt in the
    window when one is given), their attempts in the window, and the runs started in it."""
    window = []
    if since is not None:
        window.append(A.c.created_at >= since)
    if until is not None:
        window.append(A.c.created_at < until)
    scope = [B.c.name.in_(list(batches))] if batches else []

    def go(conn: Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        attempts = [
            dict(r)
            for r in conn.execute(
                select(
                    A.c.id,
                    A.c.job_id,
                    A.c.number,
                    A.c.state,
                    A.c.created_at,
                    A.c.finished_at,
                    A.c.reserved_micro_usd,
                    A.c.billed_micro_usd,
                    A.c.billable_units,
                    A.c.unit_price_micro_usd,
                    A.c.request_id,
                    A.c.price_source,
                    J.c.endpoint,
                    OUT.c.duration_us,
                )
                .select_from(
                    A.join(J, J.c.id == A.c.job_id)
                    .join(B, B.c.id == J.c.batch_id)
                    .outerjoin(OUT, OUT.c.attempt_id == A.c.id)
                )
                .where(*scope, *window)
                .order_by(A.c.id)
            ).mappings()
        ]
        job_filter = [J.c.id.in_({a["job_id"] for a in attempts})] if window else []
        jobs = [
            dict(r)
            for r in conn.execute(
                select(
                    J.c.id,
                    J.c.key,
                    J.c.endpoint,
                    J.c.input_json,
                    J.c.tags_json,
                    J.c.state,
                    J.c.created_at,
                    J.c.estimate_micro_usd,
                    J.c.price_table,
                    J.c.source,
                    J.c.output_path,
                    J.c.billed_micro_usd,
                    J.c.last_error,
                    B.c.name.label("batch"),
                )
                .select_from(J.join(B, B.c.id == J.c.batch_id))
                .where(*scope, *job_filter)
                .order_by(J.c.id)
            ).mappings()
        ]
        run_window = [R.c.started_at >= since] if since is not None else []
        if until is not None:
            run_window.append(R.c.started_at < until)
        runs = [dict(r) for r in conn.execute(select(R).where(*run_window).order_by(R.c.id)).mappings()]
        return jobs, attempts, runs

    return reading(engine, "reading the ledger", go)
