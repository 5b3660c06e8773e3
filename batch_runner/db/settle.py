"""Settling with fal's records: uncertain submits adopted, requeued or cancelled, and bills that
waited on fal's billing events recorded. Each change is fenced, so two settlers never settle twice."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.engine import Connection

from ..domain import PENDING_BILLING_EVENTS, PROVISIONAL, AttemptState, JobState
from ..records import AttemptRecord, JobRecord
from .models import Attempt, Job, Run, table, utcnow
from .transition import JOB_BY_ID_BILLED, Transitions

J, A, R = table(Job), table(Attempt), table(Run)


class Settler(Transitions):
    """What `resolve` (and a run, before it starts) records from fal's request list and billing events."""

    def uncertain_jobs(
        self, batches: Sequence[str] | None, job_ids: Sequence[int] | None = None
    ) -> list[tuple[JobRecord, AttemptRecord]]:
        """Uncertain jobs with their uncertain attempt (the one to settle)."""

        def go(conn: Connection) -> list[tuple[JobRecord, AttemptRecord]]:
            cond = [J.c.id.in_(list(job_ids))] if job_ids is not None else []
            rows = (
                conn.execute(
                    select(J)
                    .where(J.c.state == JobState.UNCERTAIN.value, *cond, *self._scope(batches))
                    .order_by(J.c.id)
                )
                .mappings()
                .all()
            )
            return [(JobRecord.from_row(r), self._latest_attempt(conn, r["id"])) for r in rows]

        return self._read("listing uncertain jobs", go)

    def known_request_ids(self, request_ids: Iterable[str]) -> set[str]:
        """Which of these fal request ids an attempt already holds (so none is adopted twice)."""
        ids = list(request_ids)

        def go(conn: Connection) -> set[str]:
            found: set[str] = set()
            for i in range(0, len(ids), 500):
                found.update(conn.execute(select(A.c.request_id).where(A.c.request_id.in_(ids[i : i + 500]))).scalars())
            return found

        return self._read("reading request ids", go) if ids else set()

    def _settle_uncertain(
        self, action: str, job: JobRecord, attempt: AttemptRecord, change: Callable[[Connection], None]
    ) -> bool:
        """Apply `change` to an uncertain job in one transaction, fenced: only if the job is still
        uncertain on that attempt (no other resolve, retry or cancel settled it meanwhile)."""

        def go(conn: Connection) -> bool:
            self._serialize(conn)
            state = conn.execute(select(J.c.state).where(J.c.id == job.id).with_for_update()).scalar()
            if state != JobState.UNCERTAIN.value or self._latest_attempt(conn, job.id).id != attempt.id:
                return False
            change(conn)
            return True

        return bool(self._tx(action, go))

    def adopt(
        self,
        job: JobRecord,
        attempt: AttemptRecord,
        request_id: str,
        status_url: str,
        response_url: str,
        cancel_url: str,
        how: str,
    ) -> bool:
        """fal has the request an uncertain submit sent: record its id and follow it like any
        submitted job (its result, output and cost are collected by the next worker)."""

        def change(conn: Connection) -> None:
            conn.execute(
                update(A)
                .where(A.c.id == attempt.id)
                .values(
                    state=AttemptState.SUBMITTED.value,
                    request_id=request_id,
                    status_url=status_url,
                    response_url=response_url,
                    cancel_url=cancel_url,
                    submitted_at=attempt.sent_at or utcnow(),
                    error=None,
                    finished_at=None,
                )
            )
            self._set_job(
                conn,
                job,
                JobState.SUBMITTED,
                f"adopted request {request_id} ({how})",
                attempt_id=attempt.id,
                next_attempt_at=None,
            )
            self._event(conn, "attempt.adopted", job=job, attempt_id=attempt.id, request_id=request_id, how=how)

        return self._settle_uncertain("adopting a request", job, attempt, change)

    def settle_unsent(
        self,
        job: JobRecord,
        attempt: AttemptRecord,
        reason: str,
        *,
        request_id: str | None = None,
        billed_micro_usd: int = 0,
        price_source: str | None = None,
    ) -> bool:
        """fal has no billable request for an uncertain submit (not found, or found failed and
        unbilled): close the attempt with what fal billed and queue the job for a new attempt."""

        def change(conn: Connection) -> None:
            extra: dict[str, Any] = {"request_id": request_id} if request_id else {}
            self._end_attempt(
                conn, attempt, AttemptState.FAILED, reason, billed=billed_micro_usd, price_source=price_source, **extra
            )
            self._set_job(
                conn,
                job,
                JobState.QUEUED,
                reason,
                attempt_id=attempt.id,
                next_attempt_at=None,
                billed_from_attempts=True,
                retry_base=job.attempt_count,
            )

        return self._settle_uncertain("settling an uncertain submit", job, attempt, change)

    def cancel_uncertain(
        self, job: JobRecord, attempt: AttemptRecord, reason: str, request_id: str | None = None
    ) -> bool:
        """An uncertain job that fal never ran (cancelled while queued, or never created): cancelled, $0."""

        def change(conn: Connection) -> None:
            extra: dict[str, Any] = {"request_id": request_id} if request_id else {}
            self._end_attempt(conn, attempt, AttemptState.CANCELLED, reason, billed=0, **extra)
            self._set_job(conn, job, JobState.CANCELLED, reason, attempt_id=attempt.id)

        return self._settle_uncertain("cancelling an uncertain job", job, attempt, change)

    def pending_bills(self, batches: Sequence[str] | None, since: datetime) -> list[AttemptRecord]:
        """Attempts made since `since` whose bill waits on fal's billing events: recorded as $0
        pending fal's word (a refused run fal may have billed), or provisional (our price table's figure)."""

        def go(conn: Connection) -> list[AttemptRecord]:
            return [
                AttemptRecord.from_row(r)
                for r in conn.execute(
                    select(A, J.c.endpoint)
                    .select_from(A.join(J, J.c.id == A.c.job_id))
                    .where(
                        or_(A.c.price_source == PENDING_BILLING_EVENTS, A.c.price_source.startswith(PROVISIONAL)),
                        A.c.request_id.is_not(None),
                        A.c.created_at > since,
                        *self._scope(batches),
                    )
                    .order_by(A.c.id)
                ).mappings()
            ]

        return self._read("reading pending bills", go)

    def settle_bill(self, attempt: AttemptRecord, billed_micro_usd: int, units: str | None, source: str) -> None:
        """Record what fal's billing events say an attempt cost (it was recorded as $0, pending)."""

        def go(conn: Connection) -> None:
            moved = conn.execute(
                update(A)
                .where(A.c.id == attempt.id, A.c.price_source == attempt.price_source)
                .values(billed_micro_usd=billed_micro_usd, billable_units=units, price_source=source)
            ).rowcount
            if moved != 1:  # settled meanwhile by another process: nothing to do
                return
            JOB_BY_ID_BILLED.run(conn, {"b_job_id": attempt.job_id})
            if attempt.run_id is not None:  # the run's committed figure follows fal's
                conn.execute(
                    update(R)
                    .where(R.c.id == attempt.run_id)
                    .values(
                        reserved_micro_usd=R.c.reserved_micro_usd + billed_micro_usd - (attempt.billed_micro_usd or 0)
                    )
                )
            self._event(
                conn,
                "attempt.bill_settled",
                job_id=attempt.job_id,
                batch_id=attempt.batch_id,
                attempt_id=attempt.id,
                billed_micro_usd=billed_micro_usd,
                source=source,
            )

        self._tx("settling a bill", go)
