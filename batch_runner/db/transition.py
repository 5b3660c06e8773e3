"""Job and attempt transitions that both faces of db/ make: a job's state change with its event,
an attempt's close with its money, the lease fence, and recording fal's answer to a cancel."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Interval, Table, Update, bindparam, func, select, update
from sqlalchemy.engine import Connection, CursorResult

from ..domain import AttemptState, JobState
from ..errors import LeaseLostError
from ..records import AttemptRecord, JobRecord
from .models import Attempt, Job, Run, table, utcnow
from .plumbing import Plumbing

J, A, R = table(Job), table(Attempt), table(Run)

# The per-job statements, built once: SQLAlchemy builds and keys a statement in Python at every
# call otherwise, which was a large share of a worker's CPU per job. Values go as parameters (an
# UPDATE without .values() sets the columns its parameters name).


@dataclass(frozen=True)
class Setter:
    """A prebuilt UPDATE whose SET columns are the parameters not named b_*. SQLAlchemy would drop
    a key that names no column without a word (a misspelt bill would be lost), so every such key
    must be a column of the table, and there must be one."""

    statement: Update
    columns: frozenset[str]

    @classmethod
    def of(cls, table_: Table, *where: Any) -> Setter:
        return cls(update(table_).where(*where), frozenset(table_.c.keys()))

    def __call__(self, conn: Connection, params: dict[str, Any]) -> CursorResult[Any]:
        if not any(not k.startswith("b_") for k in params):
            raise ValueError(f"UPDATE {self.statement.table}: no column named to set")
        return self.run(conn, params)

    def run(self, conn: Connection, params: dict[str, Any]) -> CursorResult[Any]:
        """Execute with these parameters; a statement with values of its own may set nothing more."""
        sets = {k for k in params if not k.startswith("b_")}
        if not sets <= self.columns:
            raise ValueError(f"UPDATE {self.statement.table}: no column named {sorted(sets - self.columns)}")
        return conn.execute(self.statement, params)


JOB_BY_ID = Setter.of(J, J.c.id == bindparam("b_job_id"))
ATTEMPT_BY_ID = Setter.of(A, A.c.id == bindparam("b_attempt_id"))
# A job's update that also sets its billed total, the sum over its attempts as the statement
# sees them (its own transaction's attempt update included), in the same statement: the one
# definition of a job's billed total.
JOB_BY_ID_BILLED = Setter(
    JOB_BY_ID.statement.values(
        billed_micro_usd=select(func.coalesce(func.sum(A.c.billed_micro_usd), 0))
        .where(A.c.job_id == J.c.id)
        .scalar_subquery()
    ),
    JOB_BY_ID.columns,
)
_LATEST_ATTEMPT = select(A).where(A.c.job_id == bindparam("b_job_id")).order_by(A.c.number.desc()).limit(1)
_SETTLE_RESERVATION = (  # billed replaces what was reserved: b_delta = billed - reserved
    update(R)
    .where(R.c.id == bindparam("b_run_id"))
    .values(reserved_micro_usd=R.c.reserved_micro_usd + bindparam("b_delta", type_=BigInteger()))
)
_HELD = (J.c.id == bindparam("b_job_id"), J.c.lease_owner == bindparam("b_owner"))
_HOLD_UNTIL = update(J).where(*_HELD).values(lease_expires_at=bindparam("b_until", type_=J.c.lease_expires_at.type))
# PostgreSQL: the lease ends by the server's clock (see Plumbing._clock)
_HOLD_FOR = (
    update(J).where(*_HELD).values(lease_expires_at=func.clock_timestamp() + bindparam("b_lease", type_=Interval()))
)
# A claimed job's state change that is its own lease fence (renews the lease, or changes nothing
# when the lease was taken over): one statement where _hold and the update were two. The SET
# columns beside the lease are the parameters, as for a Setter.
_HELD_SET = {"sqlite": Setter(_HOLD_UNTIL, JOB_BY_ID.columns), "postgresql": Setter(_HOLD_FOR, JOB_BY_ID.columns)}


class ClaimKind(str, enum.Enum):
    SUBMIT = "submit"  # a new attempt, to be sent
    FOLLOW = "follow"  # a live request id, to be followed to its end


@dataclass(frozen=True)
class Claim:
    """A job this worker now holds the lease on, and what to do with it. Each recorded change
    returns a new claim with the records as they now are."""

    kind: ClaimKind
    job: JobRecord
    attempt: AttemptRecord
    warning: str | None = None  # set once, on the claim that crosses the run's warning threshold
    run_id: int | None = None  # the run this claim works for (it settles the attempt)

    def moved(self, job: JobRecord | None = None, attempt: AttemptRecord | None = None) -> Claim:
        return replace(self, job=job or self.job, attempt=attempt or self.attempt)


class Transitions(Plumbing):
    """State changes shared by the worker's queue, the commands and settling with fal's records."""

    def _set_job(
        self,
        conn: Connection,
        job: JobRecord,
        state: JobState,
        reason: str | None = None,
        *,
        attempt_id: int | None = None,
        fence: bool = False,
        billed_from_attempts: bool = False,
        **values: Any,
    ) -> JobRecord:
        """The job moves to `state`, with its event; returns the job as it now is. The lease ends,
        unless `fence`: then the update is also the lease fence (see `_hold`): it keeps and renews
        this worker's lease, and raises LeaseLostError, changing nothing, when the lease was taken over.
        `billed_from_attempts`: the job's billed total becomes the sum over its attempts (the
        returned record does not carry it)."""
        now = utcnow()
        new = {"state": state.value, "updated_at": now, **values}
        if state == JobState.SUCCEEDED:
            new["last_error"] = None
        elif reason is not None:
            new["last_error"] = reason
        if fence:
            assert not billed_from_attempts, "a fenced update does not set the billed total"
            if self._fenced(conn, job.id, new) != 1:
                raise LeaseLostError(f"job {job.id}: its lease was taken over; this worker lets it go")
        else:
            new.update(lease_owner=None, lease_expires_at=None)
            (JOB_BY_ID_BILLED if billed_from_attempts else JOB_BY_ID)(conn, {"b_job_id": job.id, **new})
        self._event(
            conn,
            f"job.{state.value}",
            job=job,
            attempt_id=attempt_id,
            from_state=job.state.value,
            to_state=state.value,
            reason=reason,
            worker=self.worker,
        )
        kept = {k: v for k, v in new.items() if k in JobRecord.__dataclass_fields__}
        return job.evolve(**{**kept, "state": state})

    def _end_attempt(
        self,
        conn: Connection,
        attempt: AttemptRecord,
        state: AttemptState,
        error: str | None,
        *,
        billed: int | None,
        run_id: int | None = None,
        keep_billed: bool = False,
        **values: Any,
    ) -> AttemptRecord:
        """Close an attempt; settle its budget reservation: billed replaces reserved (None keeps it).
        `run_id`: the run that settles it. `keep_billed`: billed and settled before (a paid output
        delivered again), so the money is left as it was. Returns the attempt as it now is."""
        # a paid output delivered again keeps its money and the time it was billed (reconcile dates it)
        money: dict[str, Any] = {} if keep_billed else {"billed_micro_usd": billed, "finished_at": utcnow()}
        if run_id is not None and not keep_billed:
            money["settled_run_id"] = run_id
        ATTEMPT_BY_ID(conn, {"b_attempt_id": attempt.id, "state": state.value, "error": error, **money, **values})
        if (
            not keep_billed
            and billed is not None
            and attempt.run_id is not None
            and attempt.reserved_micro_usd is not None
            and attempt.billed_micro_usd is None
        ):
            conn.execute(
                _SETTLE_RESERVATION, {"b_run_id": attempt.run_id, "b_delta": billed - attempt.reserved_micro_usd}
            )
        return attempt.evolve(state=state, error=error, **money, **values)

    @staticmethod
    def _latest_attempt(conn: Connection, job_id: int) -> AttemptRecord:
        return AttemptRecord.from_row(conn.execute(_LATEST_ATTEMPT, {"b_job_id": job_id}).mappings().one())

    def _lease(self, conn: Connection, job_id: int, now: datetime) -> None:
        JOB_BY_ID(
            conn,
            {"b_job_id": job_id, "lease_owner": self.worker, "lease_expires_at": now + timedelta(seconds=self.lease_s)},
        )

    def _hold(self, conn: Connection, claim: Claim) -> None:
        """Fence a change to a claimed job: renew the lease if this worker still holds it, else
        raise LeaseLostError (the transaction rolls back, so nothing of the change is written).
        A change that updates the job row anyway fences with it (`_set_job(fence=True)`)."""
        if self._fenced(conn, claim.job.id, {}) != 1:
            raise LeaseLostError(f"job {claim.job.id}: its lease was taken over; this worker lets it go")

    def _fenced(self, conn: Connection, job_id: int, sets: dict[str, Any]) -> int:
        """Run the fenced UPDATE of this dialect, renewing the lease (by the server's clock on
        PostgreSQL) and setting `sets`; the rows it changed (1, or 0 when the lease is not ours)."""
        key = {"b_job_id": job_id, "b_owner": self.worker, **sets}
        if conn.dialect.name == "postgresql":
            key["b_lease"] = timedelta(seconds=self.lease_s)
        else:
            key["b_until"] = utcnow() + timedelta(seconds=self.lease_s)
        return int(_HELD_SET[conn.dialect.name].run(conn, key).rowcount)

    # ------------------------------------------------------------------ fal's answer to a cancel

    def cancel_followed(self, claim: Claim, answer: str) -> None:
        """An in-flight job cancelled through the API: it ends cancelled, unbilled unless it finishes."""

        def go(conn: Connection) -> None:
            self._hold(conn, claim)
            self._end_attempt(conn, claim.attempt, AttemptState.CANCELLED, f"cancel requested: {answer}", billed=0)
            self._set_job(
                conn,
                claim.job,
                JobState.CANCELLED,
                f"cancelled through the API ({answer})",
                attempt_id=claim.attempt.id,
            )

        self._tx("cancelling a job", go)

    def cancel_requested(self, claim: Claim, answer: str) -> None:
        """fal was asked to cancel a running request and may still finish (and bill) it: the
        job stays in flight, unleased, for the next worker to follow to its real end."""

        def go(conn: Connection) -> None:
            conn.execute(
                update(J)
                .where(J.c.id == claim.job.id, J.c.lease_owner == self.worker)
                .values(lease_owner=None, lease_expires_at=None)
            )
            self._event(
                conn,
                "job.cancel_requested",
                job=claim.job,
                attempt_id=claim.attempt.id,
                answer=answer,
                worker=self.worker,
            )

        self._tx("recording a cancel request", go)
