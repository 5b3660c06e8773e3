"""The worker's face of the database: runs, claims with leases (see `dispatch.py`), the state
transitions of a claimed job, its attempts and their money, heartbeats, and the upload cache.

Every state change writes an event in the same transaction, and every change a worker makes to a
job it claimed is fenced by its lease: if the lease was taken over (the worker stalled past it),
the change is refused and rolled back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from ..domain import FOLLOW_STATES, IN_FLIGHT_STATES, TERMINAL_STATES, AttemptState, JobState
from ..errors import LeaseLostError
from ..records import JobRecord, RunRecord
from .dispatch import Dispatch
from .models import Attempt, Event, Job, Output, Run, Upload, table, utcnow
from .plumbing import owner_pid, upsert
from .transition import ATTEMPT_BY_ID, Claim, Setter

J, A, R = table(Job), table(Attempt), table(Run)
_INSERT_OUTPUT = insert(table(Output))  # built once (see transition.py)
_ATTEMPT_STILL = Setter.of(A, A.c.id == bindparam("b_attempt_id"), A.c.state == bindparam("b_state"))
# The write-ahead of a submit: sent_at by the clock of `Plumbing._clock`, on PostgreSQL the
# server's, read in the UPDATE itself (a SELECT of the clock was one more round trip per job).
_SENDING = {
    "sqlite": _ATTEMPT_STILL,
    "postgresql": Setter(_ATTEMPT_STILL.statement.values(sent_at=func.clock_timestamp()), _ATTEMPT_STILL.columns),
}


@dataclass(frozen=True)
class RunTally:
    """What a run did, from the database: the jobs it touched and what it was billed."""

    jobs: list[JobRecord]
    billed_micro_usd: int
    attempts: int
    budget_micro_usd: int | None
    batch_states: dict[str, int]  # every job in the run's scope, by state


class JobQueue(Dispatch):
    """Queue operations for one worker process, safe to share across its threads."""

    def sending(self, claim: Claim, input_sha256: str) -> Claim:
        """Write-ahead: committed before the submit goes out, with the hash of what is sent (it
        finds the request in fal's listing if the answer is lost). Refused (LeaseLostError) when the
        claim was swept or taken over meanwhile, so a stalled worker never submits a job twice."""

        def go(conn: Connection) -> None:
            self._hold(conn, claim)
            sets: dict[str, Any] = {"state": AttemptState.SENDING.value, "input_sha256": input_sha256}
            if conn.dialect.name != "postgresql":
                sets["sent_at"] = self._clock(conn)
            moved = _SENDING[conn.dialect.name](
                conn, {"b_attempt_id": claim.attempt.id, "b_state": AttemptState.PREPARING.value, **sets}
            ).rowcount
            if moved != 1:
                raise LeaseLostError(f"job {claim.job.id}: attempt {claim.attempt.number} was closed by another worker")
            self._event(conn, "attempt.sending", job=claim.job, attempt_id=claim.attempt.id)

        self._tx("recording the submit", go)
        return claim.moved(attempt=claim.attempt.evolve(state=AttemptState.SENDING, input_sha256=input_sha256))

    def submitted(
        self, claim: Claim, request_id: str, status_url: str, response_url: str, cancel_url: str, payload_sha256: str
    ) -> Claim:
        """Committed the moment fal answers: from now on the job is followed, never resubmitted.
        A worker that lost its lease meanwhile still records the request id on its attempt (the
        request exists and may bill), then lets the job go."""

        request = {
            "request_id": request_id,
            "status_url": status_url,
            "response_url": response_url,
            "cancel_url": cancel_url,
            "submitted_at": utcnow(),
        }

        def go(conn: Connection) -> Claim | None:
            try:  # the job's update first (the lease fence, as every change takes the job row, then the attempt's)
                job = self._set_job(conn, claim.job, JobState.SUBMITTED, attempt_id=claim.attempt.id, fence=True)
            except LeaseLostError:
                ATTEMPT_BY_ID(conn, {"b_attempt_id": claim.attempt.id, **request})
                self._event(
                    conn,
                    "attempt.submitted_after_lease_lost",
                    job=claim.job,
                    attempt_id=claim.attempt.id,
                    request_id=request_id,
                    worker=self.worker,
                )
                return None
            ATTEMPT_BY_ID(conn, {"b_attempt_id": claim.attempt.id, "state": AttemptState.SUBMITTED.value, **request})
            self._event(
                conn,
                "attempt.submitted",
                job=claim.job,
                attempt_id=claim.attempt.id,
                request_id=request_id,
                input_sha256=payload_sha256,
            )
            return claim.moved(job, claim.attempt.evolve(state=AttemptState.SUBMITTED, **request))

        moved = self._tx("recording the request id", go)
        if moved is None:
            raise LeaseLostError(
                f"job {claim.job.id}: its lease was taken over while submitting; "
                f"request {request_id} is recorded on its attempt"
            )
        return moved

    def progress(self, claim: Claim, state: JobState, *, output_url: str | None = None) -> Claim:
        """in_progress / downloading (with fal's output URL, kept for a later re-download): the
        job keeps its lease."""
        if claim.job.state == state and (output_url is None or claim.attempt.output_url == output_url):
            return claim
        extra = {"output_url": output_url} if output_url else {}

        def go(conn: Connection) -> Claim:
            job = claim.job
            if job.state != state:  # the job's update is the lease fence
                job = self._set_job(conn, job, state, attempt_id=claim.attempt.id, fence=True)
            else:
                self._hold(conn, claim)
            ATTEMPT_BY_ID(conn, {"b_attempt_id": claim.attempt.id, "state": state.value, **extra})
            return claim.moved(job, claim.attempt.evolve(state=AttemptState(state.value), **extra))

        return self._tx("recording progress", go)

    def requeue(self, claim: Claim, reason: str, *, delay_s: float, sent: bool) -> None:
        """A retryable failure that billed nothing: the job waits `delay_s` and gets a new attempt."""

        def go(conn: Connection) -> None:
            self._hold(conn, claim)
            self._end_attempt(
                conn,
                claim.attempt,
                AttemptState.FAILED if sent else AttemptState.UNSENT,
                reason,
                billed=0,
                run_id=claim.run_id,
            )
            self._set_job(
                conn,
                claim.job,
                JobState.QUEUED,
                reason,
                attempt_id=claim.attempt.id,
                next_attempt_at=self._clock(conn) + timedelta(seconds=delay_s),
            )

        self._tx("requeueing a job", go)

    def follow_later(self, claim: Claim, reason: str, *, delay_s: float) -> None:
        """fal's status or result could not be read (an outage, a rate limit): the job keeps its
        request id and state, lets its lease go and is followed again after `delay_s`."""

        def go(conn: Connection) -> None:
            self._hold(conn, claim)
            conn.execute(
                update(J)
                .where(J.c.id == claim.job.id)
                .values(
                    lease_owner=None,
                    lease_expires_at=None,
                    last_error=reason,
                    next_attempt_at=self._clock(conn) + timedelta(seconds=delay_s),
                )
            )
            self._event(
                conn,
                "job.follow_later",
                job=claim.job,
                attempt_id=claim.attempt.id,
                reason=reason,
                delay_s=delay_s,
                worker=self.worker,
            )

        self._tx("handing a job back", go)

    def abandon(self, claim: Claim, reason: str, *, delay_s: float) -> None:
        """A worker hit an unexpected error (a bug) on this job: let it go in a safe state. Never
        sent: back to the queue. Maybe sent: uncertain. In flight: followed again later."""
        state = self._read("reading an attempt", lambda conn: self._latest_attempt(conn, claim.job.id).state)
        try:
            if state == AttemptState.PREPARING:
                self.requeue(claim, reason, delay_s=delay_s, sent=False)
            elif state == AttemptState.SENDING:
                self.uncertain(claim, reason)
            else:
                self.follow_later(claim, reason, delay_s=delay_s)
        except LeaseLostError:
            pass

    def failed_attempts(self, claim: Claim) -> int:
        """Attempts of this job that fal ran and that failed, since its last manual retry."""

        def go(conn: Connection) -> int:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(A)
                    .where(
                        A.c.job_id == claim.job.id,
                        A.c.number > claim.job.retry_base,
                        A.c.state.in_(
                            [
                                AttemptState.FAILED.value,
                                AttemptState.SENDING.value,
                                AttemptState.SUBMITTED.value,
                                AttemptState.IN_PROGRESS.value,
                                AttemptState.DOWNLOADING.value,
                            ]
                        ),
                    )
                ).scalar_one()
            )

        return self._read("counting attempts", go)

    def record_event(self, kind: str, **details: Any) -> None:
        """An audit event that changes no state: about the pool (fal unreachable, reachable again), or a
        note on a job (`job=`, e.g. an output check warning)."""
        self._tx("recording an event", lambda conn: self._event(conn, kind, worker=self.worker, **details))

    def release(self, claim: Claim, *, unsent: bool = False) -> None:
        """Give the job back (on stop): a live request stays as it is for the next worker; a
        claim that never sent anything goes back to the queue."""

        def go(conn: Connection) -> None:
            if unsent:
                self._hold(conn, claim)
                self._end_attempt(conn, claim.attempt, AttemptState.UNSENT, "stopped before sending", billed=0)
                self._set_job(conn, claim.job, JobState.QUEUED, "stopped before sending", attempt_id=claim.attempt.id)
            else:
                conn.execute(
                    update(J)
                    .where(J.c.id == claim.job.id, J.c.lease_owner == self.worker)
                    .values(lease_owner=None, lease_expires_at=None)
                )
                self._event(conn, "job.released", job=claim.job, attempt_id=claim.attempt.id, worker=self.worker)

        self._tx("releasing a job", go)

    def uncertain(self, claim: Claim, reason: str) -> None:
        def go(conn: Connection) -> None:
            self._hold(conn, claim)
            self._end_attempt(conn, claim.attempt, AttemptState.UNCERTAIN, reason, billed=None)
            ATTEMPT_BY_ID(conn, {"b_attempt_id": claim.attempt.id, "settled_run_id": claim.run_id})
            self._set_job(conn, claim.job, JobState.UNCERTAIN, reason, attempt_id=claim.attempt.id)

        self._tx("marking a job uncertain", go)

    def finish(
        self,
        claim: Claim,
        state: JobState,
        reason: str | None,
        *,
        billed_micro_usd: int,
        billable_units: str | None = None,
        unit_price_micro_usd: int | None = None,
        price_source: str | None = None,
        output: dict[str, Any] | None = None,
        output_url: str | None = None,
        keep_billed: bool = False,
    ) -> None:
        """A terminal state, with what fal billed (0 when nothing), the verified output and fal's
        output URL. `keep_billed`: a paid output delivered again; its money stays as recorded."""
        attempt_state = {
            JobState.SUCCEEDED: AttemptState.SUCCEEDED,
            JobState.CANCELLED: AttemptState.CANCELLED,
        }.get(state, AttemptState.FAILED)
        money = (
            {}
            if keep_billed
            else {
                "billable_units": billable_units,
                "unit_price_micro_usd": unit_price_micro_usd,
                "price_source": price_source,
            }
        )

        def go(conn: Connection) -> None:
            self._hold(conn, claim)
            self._end_attempt(
                conn,
                claim.attempt,
                attempt_state,
                reason,
                billed=billed_micro_usd,
                run_id=claim.run_id,
                keep_billed=keep_billed,
                **({"output_url": output_url} if output_url else {}),
                **money,
            )
            if output is not None:
                row = {"job_id": claim.job.id, "attempt_id": claim.attempt.id, "created_at": utcnow(), **output}
                conn.execute(_INSERT_OUTPUT, row)
            self._set_job(conn, claim.job, state, reason, attempt_id=claim.attempt.id, billed_from_attempts=True)

        self._tx("finishing a job", go)

    def expire_dead_local_leases(self, alive: Any) -> int:
        """Leases held by processes on this host that no longer exist end now (no lease wait).
        An owner with this process's pid but another nonce is a dead predecessor (a restarted
        container gets the same hostname and pid)."""

        def go(conn: Connection) -> int:
            owners = (
                conn.execute(
                    select(J.c.lease_owner)
                    .where(J.c.lease_owner.like(f"{self.local}:%"), J.c.lease_expires_at > self._clock(conn))
                    .distinct()
                )
                .scalars()
                .all()
            )
            dead = []
            for owner in owners:
                pid = owner_pid(owner, self.local)
                if owner != self.worker and pid is not None and (pid == self.actor.pid or not alive(pid)):
                    dead.append(owner)
            if dead:
                conn.execute(update(J).where(J.c.lease_owner.in_(dead)).values(lease_expires_at=self._clock(conn)))
                self._event(conn, "worker.dead", dead=dead)
                self._next_sweep = None  # their half-sent submits are stale now: the next claim sweeps
            return len(dead)

        return self._tx("reclaiming dead workers' jobs", go)

    def heartbeat(self) -> int:
        """Extend the lease of every job this worker holds; returns how many."""

        def go(conn: Connection) -> int:
            return conn.execute(
                update(J).where(J.c.lease_owner == self.worker).values(lease_expires_at=self._lease_end(conn))
            ).rowcount

        return self._tx("renewing leases", go)

    # ------------------------------------------------------------------ reading

    def remaining(self, batches: Sequence[str] | None) -> dict[str, int]:
        """Jobs still to do, by state: queued, in flight, downloading."""

        def go(conn: Connection) -> dict[str, int]:
            active = [JobState.QUEUED, *IN_FLIGHT_STATES, JobState.DOWNLOADING]
            rows = conn.execute(
                select(J.c.state, func.count())
                .where(J.c.state.in_([s.value for s in active]), *self._scope(batches))
                .group_by(J.c.state)
            ).all()
            return dict(rows)

        return self._read("counting jobs", go)

    def next_queued(self, batches: Sequence[str] | None, limit: int) -> list[JobRecord]:
        """The queued jobs the next claims would take (due now, in claim order), read without
        claiming them: the pool uploads their media ahead of their claims."""

        def go(conn: Connection) -> list[JobRecord]:
            due = or_(J.c.next_attempt_at.is_(None), J.c.next_attempt_at <= self._clock(conn))
            rows = conn.execute(
                select(J)
                .where(J.c.state == JobState.QUEUED.value, due, *self._scope(batches))
                .order_by(J.c.id)
                .limit(limit)
            ).mappings()
            return [JobRecord.from_row(r) for r in rows]

        return self._read("reading the next queued jobs", go)

    def next_retry_at(self, batches: Sequence[str] | None) -> datetime | None:
        """When the earliest waiting job (a retry, or a request to follow again) becomes due
        (ordered, not min(): SQLite's min() is untyped)."""
        waiting = [JobState.QUEUED.value, *(s.value for s in FOLLOW_STATES)]

        def go(conn: Connection) -> datetime | None:
            return conn.execute(
                select(J.c.next_attempt_at)
                .where(J.c.state.in_(waiting), J.c.next_attempt_at.is_not(None), *self._scope(batches))
                .order_by(J.c.next_attempt_at)
                .limit(1)
            ).scalar()

        return self._read("reading retry times", go)

    def run_report(self, run_id: int, batches: Sequence[str] | None) -> RunTally:
        """What a run did: the jobs its attempts touched, by final state, and what it was billed."""

        def go(conn: Connection) -> RunTally:
            run = RunRecord.from_row(conn.execute(select(R).where(R.c.id == run_id)).mappings().one())
            ran = select(A.c.job_id).where(or_(A.c.run_id == run_id, A.c.settled_run_id == run_id))
            # Jobs this process ended during the run without an attempt of it: half-sent ones a
            # dead worker left (marked uncertain), paid outputs delivered again, settled submits.
            ended = [f"job.{s.value}" for s in (*TERMINAL_STATES, JobState.UNCERTAIN)]
            swept = select(Event.job_id).where(
                Event.kind.in_(ended),
                Event.at >= run.started_at,
                Event.host == self.actor.host,
                Event.pid == self.actor.pid,
                Event.job_id.is_not(None),
            )
            touched = ran.union(swept).subquery()
            rows = [
                JobRecord.from_row(r)
                for r in conn.execute(select(J).where(J.c.id.in_(select(touched.c.job_id))).order_by(J.c.id)).mappings()
            ]
            billed = conn.execute(
                select(func.coalesce(func.sum(A.c.billed_micro_usd), 0)).where(A.c.settled_run_id == run_id)
            ).scalar_one()
            attempts = conn.execute(select(func.count()).select_from(A).where(A.c.run_id == run_id)).scalar_one()
            scope = conn.execute(select(J.c.state, func.count()).where(*self._scope(batches)).group_by(J.c.state)).all()
            return RunTally(rows, int(billed), int(attempts), run.budget_micro_usd, {s: int(n) for s, n in scope})

        return self._read("reporting the run", go)

    # ------------------------------------------------------------------ uploads

    def cached_upload(self, sha256: str, base_url: str) -> str | None:
        def go(conn: Connection) -> str | None:
            return conn.execute(
                select(Upload.url).where(
                    Upload.sha256 == sha256, Upload.base_url == base_url, Upload.expires_at > utcnow()
                )
            ).scalar()

        return self._read("reading the upload cache", go)

    def store_upload(self, sha256: str, base_url: str, url: str, size: int, ttl_s: float) -> None:
        def go(conn: Connection) -> None:
            now = utcnow()
            fresh = {"url": url, "size_bytes": size, "created_at": now, "expires_at": now + timedelta(seconds=ttl_s)}
            # an upsert: workers on other machines may have uploaded the same file a moment ago
            conn.execute(
                upsert(conn.dialect.name, Upload, ["sha256", "base_url"], fresh).values(
                    sha256=sha256, base_url=base_url, **fresh
                )
            )

        self._tx("writing the upload cache", go)
