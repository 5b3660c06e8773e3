"""The job queue in SQL: runs and budget reservations, claims with leases, state transitions,
attempts, the audit trail, and the upload cache.

Every claim takes the `dispatch` lock row first, so the in-flight cap and the budget check are
decided one claim at a time across threads, processes and machines; on PostgreSQL the job rows
are then picked with `FOR UPDATE SKIP LOCKED`. Every state change writes an event in the same
transaction, and every change a worker makes to a job it claimed is fenced by its lease: if the
lease was taken over (the worker stalled past it), the change is refused and rolled back.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ..domain import (
    FOLLOW_STATES,
    IN_FLIGHT_STATES,
    PENDING_BILLING_EVENTS,
    PROVISIONAL,
    TERMINAL_STATES,
    Actor,
    AttemptState,
    JobState,
    format_usd,
)
from ..errors import DatabaseError, LeaseLostError
from .engine import safe_url, write_lock
from .models import Attempt, Batch, Event, Job, Lock, Output, Run, Upload, table, utcnow

J, A, R = table(Job), table(Attempt), table(Run)


DAY = timedelta(hours=24)
_T = TypeVar("_T")


@dataclass(frozen=True)
class RunInfo:
    id: int
    name: str
    budget_micro_usd: int | None
    reserved_micro_usd: int
    batch_id: int | None = None
    daily_budget_micro_usd: int | None = None
    warn_at_micro_usd: int | None = None


@dataclass(frozen=True)
class Claim:
    """A job this worker now holds the lease on, and what to do with it."""

    kind: str  # "submit" (a new attempt) or "follow" (a live request id)
    job: dict[str, Any]
    attempt: dict[str, Any]
    warning: str | None = None  # set once, on the claim that crosses the run's warning threshold
    run_id: int | None = None  # the run this claim works for (it settles the attempt)


@dataclass(frozen=True)
class BudgetStop:
    """The next job's estimate does not fit in what is left of the run's budget."""

    job_id: int
    estimate_micro_usd: int
    left_micro_usd: int
    budget_micro_usd: int = 0
    scope: str = "run"  # "run", "batch per day" or "account per day"


def owner_pid(owner: str, local: str) -> int | None:
    """The process id in a lease owner `local:pid[:nonce]` when it runs where this process can
    see its pid (same host, same pid namespace), else None."""
    if not owner.startswith(local + ":"):
        return None
    pid = owner[len(local) + 1 :].split(":", 1)[0]
    return int(pid) if pid.isdigit() else None


class JobQueue:
    """Queue operations for one worker process, safe to share across its threads.

    The worker's name is host[@pidns]:pid:nonce. `pidns` (the process id namespace) keeps two
    containers that share a hostname but not their process ids from judging each other dead; the
    nonce keeps a restarted container (same hostname, same pid 1) from taking its dead
    predecessor's leases for its own."""

    def __init__(self, engine: Engine, actor: Actor, lease_s: float, *, pid_namespace: str | None = None) -> None:
        self.engine, self.actor, self.lease_s = engine, actor, lease_s
        self.local = f"{actor.host}@{pid_namespace}" if pid_namespace else actor.host  # who can see whose pids
        self.worker = f"{self.local}:{actor.pid}:{secrets.token_hex(3)}"

    def _fail(self, action: str, exc: SQLAlchemyError) -> DatabaseError:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return DatabaseError(f"{action} failed on {safe_url(str(self.engine.url))}: {first[0] if first else exc}")

    def _tx(self, action: str, fn: Callable[..., _T], *args: Any) -> _T:
        """A write transaction (through the SQLite write lock)."""
        try:
            with write_lock(self.engine), self.engine.begin() as conn:
                return fn(conn, *args)
        except SQLAlchemyError as exc:
            raise self._fail(action, exc) from exc

    def _read(self, action: str, fn: Callable[..., _T], *args: Any) -> _T:
        """A read: no write lock, so idle workers and cache lookups never queue behind writers."""
        try:
            with self.engine.connect() as conn:
                return fn(conn, *args)
        except SQLAlchemyError as exc:
            raise self._fail(action, exc) from exc

    def _event(
        self,
        conn: Connection,
        kind: str,
        *,
        job: dict[str, Any] | None = None,
        attempt_id: int | None = None,
        batch_id: int | None = None,
        from_state: str | None = None,
        to_state: str | None = None,
        **details: Any,
    ) -> None:
        conn.execute(
            insert(Event),
            [
                {
                    "at": utcnow(),
                    "batch_id": batch_id or (job or {}).get("batch_id"),
                    "job_id": (job or {}).get("id"),
                    "attempt_id": attempt_id,
                    "host": self.actor.host,
                    "pid": self.actor.pid,
                    "user": self.actor.user,
                    "kind": kind,
                    "from_state": from_state,
                    "to_state": to_state,
                    "details_json": json.dumps(
                        {k: v for k, v in details.items() if v is not None}, sort_keys=True, default=str
                    ),
                }
            ],
        )

    # ------------------------------------------------------------------ runs

    def start_run(
        self,
        name: str,
        batch: str | None,
        budget_micro_usd: int | None,
        daily_budget_micro_usd: int | None = None,
        warn_at_micro_usd: int | None = None,
    ) -> RunInfo:
        """Create the named run, or join it (budgets given later replace earlier ones)."""
        policies: dict[str, Any] = {
            "budget_micro_usd": budget_micro_usd,
            "daily_budget_micro_usd": daily_budget_micro_usd,
            "warn_at_micro_usd": warn_at_micro_usd,
        }

        def go(conn: Connection) -> RunInfo:
            self._serialize(conn)  # workers on several machines may join the same run at once
            batch_id = conn.execute(select(Batch.id).where(Batch.name == batch)).scalar() if batch else None
            row = conn.execute(select(R).where(R.c.name == name)).mappings().first()
            if row is None:
                conn.execute(
                    insert(R).values(
                        name=name,
                        batch_id=batch_id,
                        reserved_micro_usd=0,
                        status="running",
                        started_at=utcnow(),
                        host=self.actor.host,
                        pid=self.actor.pid,
                        **policies,
                    )
                )
            else:
                given = {k: v for k, v in policies.items() if v is not None}
                if given:
                    conn.execute(update(R).where(R.c.name == name).values(**given))
            self._event(conn, "run.started", batch_id=batch_id, run=name, **policies)
            return self._run_info(conn, name)

        return self._tx("starting the run", go)

    def _run_info(self, conn: Connection, name: str) -> RunInfo:
        row = conn.execute(select(R).where(R.c.name == name)).mappings().one()
        return RunInfo(
            row["id"],
            name,
            row["budget_micro_usd"],
            row["reserved_micro_usd"],
            row["batch_id"],
            row["daily_budget_micro_usd"],
            row["warn_at_micro_usd"],
        )

    def spent_since(self, conn: Connection, since: datetime, batch_id: int | None) -> int:
        """Money committed by attempts created since `since`: what fal billed, or, while the
        outcome is open (in flight, uncertain), what was reserved for it."""
        committed = func.coalesce(A.c.billed_micro_usd, A.c.reserved_micro_usd, 0)
        stmt = select(func.coalesce(func.sum(committed), 0)).where(A.c.created_at >= since)
        if batch_id is not None:
            stmt = stmt.where(A.c.batch_id == batch_id)
        return int(conn.execute(stmt).scalar_one())

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any]) -> None:
        def go(conn: Connection) -> None:
            conn.execute(
                update(R)
                .where(R.c.id == run_id)
                .values(status=status, finished_at=utcnow(), summary_json=json.dumps(summary, sort_keys=True))
            )
            self._event(conn, "run.finished", status=status, run_id=run_id)

        self._tx("finishing the run", go)

    # ------------------------------------------------------------------ claiming

    def claim(
        self,
        run_id: int,
        batches: Sequence[str] | None,
        max_in_flight: int,
        follow_only: bool = False,
        account_daily_micro_usd: int | None = None,
    ) -> Claim | BudgetStop | None:
        """The next job for this worker: a live request to follow first, else a queued job to
        submit (if the in-flight cap and the run's budget allow). None when there is nothing."""

        def go(conn: Connection) -> Claim | BudgetStop | None:
            self._serialize(conn)
            now = self._clock(conn)
            self._sweep_stale_submits(conn, now, batches, run_id)
            scope = self._scope(batches)
            free = or_(J.c.lease_owner.is_(None), J.c.lease_expires_at < now)
            due = or_(J.c.next_attempt_at.is_(None), J.c.next_attempt_at <= now)
            follow = (
                conn.execute(
                    select(J)
                    .where(J.c.state.in_([s.value for s in FOLLOW_STATES]), free, due, *scope)
                    .order_by(J.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                .mappings()
                .first()
            )
            if follow is not None:
                attempt = self._latest_attempt(conn, follow["id"])
                self._lease(conn, follow["id"], now)
                self._event(
                    conn,
                    "job.followed",
                    job=dict(follow),
                    attempt_id=attempt["id"],
                    request_id=attempt["request_id"],
                    worker=self.worker,
                )
                return Claim("follow", dict(follow), attempt, run_id=run_id)
            if follow_only:
                return None
            in_flight = conn.execute(
                select(func.count()).select_from(J).where(J.c.state.in_([s.value for s in IN_FLIGHT_STATES]))
            ).scalar_one()
            if in_flight >= max_in_flight:
                return None
            job = (
                conn.execute(
                    select(J)
                    .where(
                        J.c.state == JobState.QUEUED.value,
                        or_(J.c.next_attempt_at.is_(None), J.c.next_attempt_at <= now),
                        *scope,
                    )
                    .order_by(J.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                .mappings()
                .first()
            )
            if job is None:
                return None
            est = job["estimate_micro_usd"]
            run = conn.execute(select(R).where(R.c.id == run_id)).mappings().one()
            day_ago = now - DAY
            for limit, scope_batch, budget_scope in (
                (run["daily_budget_micro_usd"], job["batch_id"], "batch per day"),
                (account_daily_micro_usd, None, "account per day"),
            ):
                if limit is not None:
                    spent = self.spent_since(conn, day_ago, scope_batch)
                    if spent + est > limit:
                        return BudgetStop(job["id"], est, limit - spent, limit, budget_scope)
            reserved = conn.execute(
                update(R)
                .where(
                    R.c.id == run_id,
                    or_(R.c.budget_micro_usd.is_(None), R.c.reserved_micro_usd + est <= R.c.budget_micro_usd),
                )
                .values(reserved_micro_usd=R.c.reserved_micro_usd + est)
            )
            if reserved.rowcount != 1:
                return BudgetStop(
                    job["id"],
                    est,
                    (run["budget_micro_usd"] or 0) - run["reserved_micro_usd"],
                    run["budget_micro_usd"] or 0,
                    "run",
                )
            warning = None
            warn_at = run["warn_at_micro_usd"]
            if warn_at is not None and not run["warned"] and warn_at <= run["reserved_micro_usd"] + est:
                warning = (
                    f"run {run['name']} has committed ${format_usd(run['reserved_micro_usd'] + est)}, "
                    f"past its ${format_usd(warn_at)} warning threshold"
                )
                conn.execute(update(R).where(R.c.id == run_id).values(warned=True))  # once per run
                self._event(
                    conn,
                    "run.budget_warning",
                    batch_id=job["batch_id"],
                    run=run["name"],
                    committed_micro_usd=run["reserved_micro_usd"] + est,
                    warn_at_micro_usd=warn_at,
                )
            number = job["attempt_count"] + 1
            key = conn.execute(
                insert(A).values(
                    job_id=job["id"],
                    number=number,
                    run_id=run_id,
                    batch_id=job["batch_id"],
                    worker=self.worker,
                    state=AttemptState.PREPARING.value,
                    reserved_micro_usd=est,
                    created_at=now,
                )
            ).inserted_primary_key
            assert key is not None  # a single-row INSERT always reports its primary key
            attempt_id = key[0]
            conn.execute(
                update(J)
                .where(J.c.id == job["id"])
                .values(
                    state=JobState.SUBMITTING.value,
                    attempt_count=number,
                    lease_owner=self.worker,
                    lease_expires_at=now + timedelta(seconds=self.lease_s),
                    updated_at=now,
                    next_attempt_at=None,
                )
            )
            self._event(
                conn,
                "job.claimed",
                job=dict(job),
                attempt_id=attempt_id,
                from_state=job["state"],
                to_state=JobState.SUBMITTING.value,
                attempt=number,
                reserved_micro_usd=est,
                worker=self.worker,
            )
            created = conn.execute(select(A).where(A.c.id == attempt_id)).mappings().one()
            return Claim("submit", {**job, "attempt_count": number}, dict(created), warning, run_id)

        return self._tx("claiming a job", go)

    @staticmethod
    def _clock(conn: Connection) -> datetime:
        """The time leases and retry times are set and compared by: on PostgreSQL the database
        server's clock, so workers on machines whose clocks disagree still agree on when a lease
        ends; SQLite is on this machine anyway."""
        if conn.dialect.name == "postgresql":
            server_now: datetime = conn.execute(select(func.clock_timestamp())).scalar_one()
            return server_now
        return utcnow()

    def _lease_end(self, conn: Connection) -> Any:
        """When a lease taken or renewed now ends: computed by the server on PostgreSQL (no extra
        round trip), by this machine on SQLite."""
        if conn.dialect.name == "postgresql":
            return func.clock_timestamp() + timedelta(seconds=self.lease_s)
        return utcnow() + timedelta(seconds=self.lease_s)

    @staticmethod
    def _serialize(conn: Connection) -> None:
        """Take the `dispatch` row lock: held to the end of the transaction, it makes claims and run
        creation one at a time across every thread, process and machine."""
        conn.execute(update(Lock).where(Lock.name == "dispatch").values(counter=Lock.counter + 1))

    def _scope(self, batches: Sequence[str] | None) -> list[Any]:
        if not batches:
            return []
        return [J.c.batch_id.in_(select(Batch.id).where(Batch.name.in_(list(batches))))]

    def _lease(self, conn: Connection, job_id: int, now: datetime) -> None:
        conn.execute(
            update(J)
            .where(J.c.id == job_id)
            .values(lease_owner=self.worker, lease_expires_at=now + timedelta(seconds=self.lease_s))
        )

    def _latest_attempt(self, conn: Connection, job_id: int) -> dict[str, Any]:
        return dict(
            conn.execute(select(A).where(A.c.job_id == job_id).order_by(A.c.number.desc()).limit(1)).mappings().one()
        )

    def _hold(self, conn: Connection, claim: Claim) -> None:
        """Fence a change to a claimed job: renew the lease if this worker still holds it, else
        raise LeaseLostError (the transaction rolls back, so nothing of the change is written)."""
        held = conn.execute(
            update(J)
            .where(J.c.id == claim.job["id"], J.c.lease_owner == self.worker)
            .values(lease_expires_at=self._lease_end(conn))
        ).rowcount
        if held != 1:
            raise LeaseLostError(f"job {claim.job['id']}: its lease was taken over; this worker lets it go")

    def sweep(self, batches: Sequence[str] | None, run_id: int | None) -> None:
        """Settle now what dead workers left half-sent (see `_sweep_stale_submits`), so a run can
        ask fal about them before it starts."""

        def go(conn: Connection) -> None:
            self._serialize(conn)
            self._sweep_stale_submits(conn, self._clock(conn), batches, run_id)

        self._tx("sweeping stale submits", go)

    def _sweep_stale_submits(
        self, conn: Connection, now: datetime, batches: Sequence[str] | None, run_id: int | None = None
    ) -> None:
        """Jobs left in `submitting` by a dead worker: requeue what was never sent, and mark
        what may have been sent as uncertain (never resubmitted automatically)."""
        stale = (
            conn.execute(
                select(J).where(
                    J.c.state == JobState.SUBMITTING.value, J.c.lease_expires_at < now, *self._scope(batches)
                )
            )
            .mappings()
            .all()
        )
        for job in stale:
            attempt = self._latest_attempt(conn, job["id"])
            if attempt["state"] == AttemptState.PREPARING.value:
                self._end_attempt(conn, attempt, AttemptState.UNSENT, "the worker stopped before sending", billed=0)
                self._set_job(
                    conn,
                    dict(job),
                    JobState.QUEUED,
                    "worker stopped before sending; requeued",
                    attempt_id=attempt["id"],
                )
            else:
                self._end_attempt(
                    conn, attempt, AttemptState.UNCERTAIN, "the worker stopped while sending the submit", billed=None
                )
                conn.execute(update(A).where(A.c.id == attempt["id"]).values(settled_run_id=run_id))
                self._set_job(
                    conn,
                    dict(job),
                    JobState.UNCERTAIN,
                    "worker stopped while sending the submit",
                    attempt_id=attempt["id"],
                )

    # ------------------------------------------------------------------ transitions

    def _set_job(
        self,
        conn: Connection,
        job: dict[str, Any],
        state: JobState,
        reason: str | None = None,
        *,
        attempt_id: int | None = None,
        keep_lease: bool = False,
        **values: Any,
    ) -> None:
        now = utcnow()
        new = {"state": state.value, "updated_at": now, **values}
        if state == JobState.SUCCEEDED:
            new["last_error"] = None
        elif reason is not None:
            new["last_error"] = reason
        if not keep_lease:
            new.update(lease_owner=None, lease_expires_at=None)
        conn.execute(update(J).where(J.c.id == job["id"]).values(**new))
        self._event(
            conn,
            f"job.{state.value}",
            job=job,
            attempt_id=attempt_id,
            from_state=job["state"],
            to_state=state.value,
            reason=reason,
            worker=self.worker,
        )
        job["state"] = state.value

    def _end_attempt(
        self,
        conn: Connection,
        attempt: dict[str, Any],
        state: AttemptState,
        error: str | None,
        *,
        billed: int | None,
        run_id: int | None = None,
        keep_billed: bool = False,
        **values: Any,
    ) -> None:
        """Close an attempt; settle its budget reservation: billed replaces reserved (None keeps it).
        `run_id`: the run that settles it. `keep_billed`: billed and settled before (a paid output
        delivered again), so the money is left as it was."""
        # a paid output delivered again keeps its money and the time it was billed (reconcile dates it)
        money: dict[str, Any] = {} if keep_billed else {"billed_micro_usd": billed, "finished_at": utcnow()}
        if run_id is not None and not keep_billed:
            money["settled_run_id"] = run_id
        conn.execute(update(A).where(A.c.id == attempt["id"]).values(state=state.value, error=error, **money, **values))
        if (
            not keep_billed
            and billed is not None
            and attempt.get("run_id") is not None
            and attempt.get("reserved_micro_usd") is not None
            and attempt.get("billed_micro_usd") is None
        ):
            conn.execute(
                update(R)
                .where(R.c.id == attempt["run_id"])
                .values(reserved_micro_usd=R.c.reserved_micro_usd + billed - attempt["reserved_micro_usd"])
            )
        attempt["state"] = state.value
        if not keep_billed:
            attempt["billed_micro_usd"] = billed

    def sending(self, claim: Claim, input_sha256: str) -> None:
        """Write-ahead: committed before the submit goes out, with the hash of what is sent (it
        finds the request in fal's listing if the answer is lost). Refused (LeaseLostError) when the
        claim was swept or taken over meanwhile, so a stalled worker never submits a job twice."""

        def go(conn: Connection) -> None:
            self._hold(conn, claim)
            moved = conn.execute(
                update(A)
                .where(A.c.id == claim.attempt["id"], A.c.state == AttemptState.PREPARING.value)
                .values(state=AttemptState.SENDING.value, input_sha256=input_sha256, sent_at=self._clock(conn))
            ).rowcount
            if moved != 1:
                raise LeaseLostError(
                    f"job {claim.job['id']}: attempt {claim.attempt['number']} was closed by another worker"
                )
            self._event(conn, "attempt.sending", job=claim.job, attempt_id=claim.attempt["id"])

        self._tx("recording the submit", go)
        claim.attempt.update(state=AttemptState.SENDING.value, input_sha256=input_sha256)

    def submitted(
        self, claim: Claim, request_id: str, status_url: str, response_url: str, cancel_url: str, payload_sha256: str
    ) -> None:
        """Committed the moment fal answers: from now on the job is followed, never resubmitted.
        A worker that lost its lease meanwhile still records the request id on its attempt (the
        request exists and may bill), then lets the job go."""

        def go(conn: Connection) -> bool:
            try:
                self._hold(conn, claim)
            except LeaseLostError:
                conn.execute(
                    update(A)
                    .where(A.c.id == claim.attempt["id"])
                    .values(
                        request_id=request_id,
                        status_url=status_url,
                        response_url=response_url,
                        cancel_url=cancel_url,
                        submitted_at=utcnow(),
                    )
                )
                self._event(
                    conn,
                    "attempt.submitted_after_lease_lost",
                    job=claim.job,
                    attempt_id=claim.attempt["id"],
                    request_id=request_id,
                    worker=self.worker,
                )
                return False
            conn.execute(
                update(A)
                .where(A.c.id == claim.attempt["id"])
                .values(
                    state=AttemptState.SUBMITTED.value,
                    request_id=request_id,
                    status_url=status_url,
                    response_url=response_url,
                    cancel_url=cancel_url,
                    submitted_at=utcnow(),
                )
            )
            self._set_job(conn, claim.job, JobState.SUBMITTED, attempt_id=claim.attempt["id"], keep_lease=True)
            self._event(
                conn,
                "attempt.submitted",
                job=claim.job,
                attempt_id=claim.attempt["id"],
                request_id=request_id,
                input_sha256=payload_sha256,
            )
            return True

        if not self._tx("recording the request id", go):
            raise LeaseLostError(
                f"job {claim.job['id']}: its lease was taken over while submitting; "
                f"request {request_id} is recorded on its attempt"
            )
        claim.attempt.update(
            state=AttemptState.SUBMITTED.value,
            request_id=request_id,
            status_url=status_url,
            response_url=response_url,
            cancel_url=cancel_url,
        )

    def progress(self, claim: Claim, state: JobState, *, output_url: str | None = None) -> None:
        """in_progress / downloading (with fal's output URL, kept for a later re-download): the
        job keeps its lease."""
        if claim.job["state"] == state.value and (output_url is None or claim.attempt.get("output_url") == output_url):
            return

        def go(conn: Connection) -> None:
            self._hold(conn, claim)
            extra = {"output_url": output_url} if output_url else {}
            conn.execute(update(A).where(A.c.id == claim.attempt["id"]).values(state=state.value, **extra))
            if claim.job["state"] != state.value:
                self._set_job(conn, claim.job, state, attempt_id=claim.attempt["id"], keep_lease=True)

        self._tx("recording progress", go)
        if output_url:
            claim.attempt["output_url"] = output_url

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
                attempt_id=claim.attempt["id"],
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
                .where(J.c.id == claim.job["id"])
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
                attempt_id=claim.attempt["id"],
                reason=reason,
                delay_s=delay_s,
                worker=self.worker,
            )

        self._tx("handing a job back", go)

    def abandon(self, claim: Claim, reason: str, *, delay_s: float) -> None:
        """A worker hit an unexpected error (a bug) on this job: let it go in a safe state. Never
        sent: back to the queue. Maybe sent: uncertain. In flight: followed again later."""
        state = claim.attempt.get("state")
        try:
            if state == AttemptState.PREPARING.value:
                self.requeue(claim, reason, delay_s=delay_s, sent=False)
            elif state == AttemptState.SENDING.value:
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
                        A.c.job_id == claim.job["id"],
                        A.c.number > claim.job.get("retry_base", 0),
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
                self._set_job(
                    conn, claim.job, JobState.QUEUED, "stopped before sending", attempt_id=claim.attempt["id"]
                )
            else:
                conn.execute(
                    update(J)
                    .where(J.c.id == claim.job["id"], J.c.lease_owner == self.worker)
                    .values(lease_owner=None, lease_expires_at=None)
                )
                self._event(conn, "job.released", job=claim.job, attempt_id=claim.attempt["id"], worker=self.worker)

        self._tx("releasing a job", go)

    def uncertain(self, claim: Claim, reason: str) -> None:
        def go(conn: Connection) -> None:
            self._hold(conn, claim)
            self._end_attempt(conn, claim.attempt, AttemptState.UNCERTAIN, reason, billed=None)
            conn.execute(update(A).where(A.c.id == claim.attempt["id"]).values(settled_run_id=claim.run_id))
            self._set_job(conn, claim.job, JobState.UNCERTAIN, reason, attempt_id=claim.attempt["id"])

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
            total = self._job_billed(conn, claim.job["id"])
            if output is not None:
                conn.execute(
                    insert(Output).values(
                        job_id=claim.job["id"], attempt_id=claim.attempt["id"], created_at=utcnow(), **output
                    )
                )
            self._set_job(conn, claim.job, state, reason, attempt_id=claim.attempt["id"], billed_micro_usd=total)

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

    def jobs_in(self, batches: Sequence[str] | None, states: Iterable[JobState]) -> list[dict[str, Any]]:
        def go(conn: Connection) -> list[dict[str, Any]]:
            return [
                dict(r)
                for r in conn.execute(
                    select(J).where(J.c.state.in_([s.value for s in states]), *self._scope(batches)).order_by(J.c.id)
                ).mappings()
            ]

        return self._read("listing jobs", go)

    def run_report(self, run_id: int, batches: Sequence[str] | None) -> dict[str, Any]:
        """What a run did: the jobs its attempts touched, by final state, and what it was billed."""

        def go(conn: Connection) -> dict[str, Any]:
            run = conn.execute(select(R).where(R.c.id == run_id)).mappings().one()
            ran = select(A.c.job_id).where(or_(A.c.run_id == run_id, A.c.settled_run_id == run_id))
            # Jobs this process ended during the run without an attempt of it: half-sent ones a
            # dead worker left (marked uncertain), paid outputs delivered again, settled submits.
            ended = [f"job.{s.value}" for s in (*TERMINAL_STATES, JobState.UNCERTAIN)]
            swept = select(Event.job_id).where(
                Event.kind.in_(ended),
                Event.at >= run["started_at"],
                Event.host == self.actor.host,
                Event.pid == self.actor.pid,
                Event.job_id.is_not(None),
            )
            touched = ran.union(swept).subquery()
            rows = [
                dict(r)
                for r in conn.execute(select(J).where(J.c.id.in_(select(touched.c.job_id))).order_by(J.c.id)).mappings()
            ]
            billed = conn.execute(
                select(func.coalesce(func.sum(A.c.billed_micro_usd), 0)).where(A.c.settled_run_id == run_id)
            ).scalar_one()
            attempts = conn.execute(select(func.count()).select_from(A).where(A.c.run_id == run_id)).scalar_one()
            scope = conn.execute(select(J.c.state, func.count()).where(*self._scope(batches)).group_by(J.c.state)).all()
            return {
                "jobs": rows,
                "billed_micro_usd": int(billed),
                "attempts": int(attempts),
                "budget_micro_usd": run["budget_micro_usd"],
                "reserved_micro_usd": run["reserved_micro_usd"],
                "batch_states": dict(scope),
            }

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
            dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            conn.execute(
                dialect_insert(Upload)
                .values(sha256=sha256, base_url=base_url, **fresh)
                .on_conflict_do_update(index_elements=["sha256", "base_url"], set_=fresh)
            )

        self._tx("writing the upload cache", go)

    # ------------------------------------------------------------------ management

    def find_jobs(self, refs: Sequence[str]) -> list[dict[str, Any]]:
        """Jobs by id or key prefix (at least 6 characters)."""

        def go(conn: Connection) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for ref in refs:
                cond = J.c.id == int(ref) if ref.isdigit() else J.c.key.like(f"{ref}%")
                rows = conn.execute(select(J).where(cond)).mappings().all()
                out.extend(dict(r) for r in rows)
            return out

        return self._read("finding jobs", go)

    def history(self, job_id: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        def go(conn: Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            attempts = [
                dict(r) for r in conn.execute(select(A).where(A.c.job_id == job_id).order_by(A.c.number)).mappings()
            ]
            events = [
                dict(r)
                for r in conn.execute(select(table(Event)).where(Event.job_id == job_id).order_by(Event.id)).mappings()
            ]
            return attempts, events

        return self._read("reading a job's history", go)

    def retry_plan(self, job_ids: Sequence[int], from_states: Iterable[JobState]) -> list[tuple[dict[str, Any], str]]:
        """What `retry` would do with each job: "redeliver" (fal's paid output is fetched again,
        free) or "resubmit" (a new attempt, which fal bills again if it succeeds)."""
        allowed = [s.value for s in from_states]

        def go(conn: Connection) -> list[tuple[dict[str, Any], str]]:
            out = []
            for job in conn.execute(
                select(J).where(J.c.id.in_(list(job_ids)), J.c.state.in_(allowed)).order_by(J.c.id)
            ).mappings():
                last = self._latest_attempt(conn, job["id"]) if job["attempt_count"] else None
                again = (
                    last is not None
                    and last["output_url"]
                    and last["billed_micro_usd"] is not None
                    and last["state"] == AttemptState.FAILED.value
                    and job["state"] == JobState.FAILED.value
                )
                out.append((dict(job), "redeliver" if again else "resubmit"))
            return out

        return self._read("planning a retry", go)

    def requeue_jobs(self, job_ids: Sequence[int], from_states: Iterable[JobState], reason: str) -> int:
        """Put jobs back on purpose (`retry`): history is kept. A paid output that was never
        delivered is fetched again (free); any other job gets a new attempt, with a fresh set of
        automatic attempts."""
        plan = self.retry_plan(job_ids, from_states)

        def go(conn: Connection) -> int:
            for job, how in plan:
                if how == "redeliver":
                    last = self._latest_attempt(conn, job["id"])
                    conn.execute(update(A).where(A.c.id == last["id"]).values(state=AttemptState.DOWNLOADING.value))
                    self._set_job(
                        conn,
                        job,
                        JobState.DOWNLOADING,
                        f"{reason}: fetching the paid output again",
                        attempt_id=last["id"],
                        next_attempt_at=None,
                    )
                else:
                    self._set_job(
                        conn, job, JobState.QUEUED, reason, next_attempt_at=None, retry_base=job["attempt_count"]
                    )
            return len(plan)

        return self._tx("requeueing jobs", go)

    def cancel_queued(self, job_ids: Sequence[int], reason: str) -> int:
        def go(conn: Connection) -> int:
            n = 0
            for job in conn.execute(
                select(J).where(J.c.id.in_(list(job_ids)), J.c.state == JobState.QUEUED.value)
            ).mappings():
                self._set_job(conn, dict(job), JobState.CANCELLED, reason)
                n += 1
            return n

        return self._tx("cancelling jobs", go)

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
                attempt_id=claim.attempt["id"],
            )

        self._tx("cancelling a job", go)

    def cancel_requested(self, claim: Claim, answer: str) -> None:
        """fal was asked to cancel a running request and may still finish (and bill) it: the
        job stays in flight, unleased, for the next worker to follow to its real end."""

        def go(conn: Connection) -> None:
            conn.execute(
                update(J)
                .where(J.c.id == claim.job["id"], J.c.lease_owner == self.worker)
                .values(lease_owner=None, lease_expires_at=None)
            )
            self._event(
                conn,
                "job.cancel_requested",
                job=claim.job,
                attempt_id=claim.attempt["id"],
                answer=answer,
                worker=self.worker,
            )

        self._tx("recording a cancel request", go)

    def lease_for_cancel(self, job_ids: Sequence[int]) -> list[Claim]:
        """In-flight jobs with a request id, taken over for cancellation."""

        def go(conn: Connection) -> list[Claim]:
            out = []
            now = self._clock(conn)
            rows = (
                conn.execute(
                    select(J).where(J.c.id.in_(list(job_ids)), J.c.state.in_([s.value for s in FOLLOW_STATES]))
                )
                .mappings()
                .all()
            )
            for job in rows:
                attempt = self._latest_attempt(conn, job["id"])
                if attempt.get("cancel_url"):
                    self._lease(conn, job["id"], now)
                    out.append(Claim("follow", dict(job), attempt))
            return out

        return self._tx("taking jobs to cancel", go)

    # ------------------------------------------------------------------ settling with fal's records

    def uncertain_jobs(
        self, batches: Sequence[str] | None, job_ids: Sequence[int] | None = None
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Uncertain jobs with their uncertain attempt (the one to settle)."""

        def go(conn: Connection) -> list[tuple[dict[str, Any], dict[str, Any]]]:
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
            return [(dict(r), self._latest_attempt(conn, r["id"])) for r in rows]

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
        self, action: str, job: dict[str, Any], attempt: dict[str, Any], change: Callable[[Connection], None]
    ) -> bool:
        """Apply `change` to an uncertain job in one transaction, fenced: only if the job is still
        uncertain on that attempt (no other resolve, retry or cancel settled it meanwhile)."""

        def go(conn: Connection) -> bool:
            self._serialize(conn)
            state = conn.execute(select(J.c.state).where(J.c.id == job["id"]).with_for_update()).scalar()
            if state != JobState.UNCERTAIN.value or self._latest_attempt(conn, job["id"])["id"] != attempt["id"]:
                return False
            change(conn)
            return True

        return bool(self._tx(action, go))

    def _job_billed(self, conn: Connection, job_id: int) -> int:
        """A job's billed total: the sum over its attempts."""
        return int(
            conn.execute(
                select(func.coalesce(func.sum(A.c.billed_micro_usd), 0)).where(A.c.job_id == job_id)
            ).scalar_one()
        )

    def adopt(
        self,
        job: dict[str, Any],
        attempt: dict[str, Any],
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
                .where(A.c.id == attempt["id"])
                .values(
                    state=AttemptState.SUBMITTED.value,
                    request_id=request_id,
                    status_url=status_url,
                    response_url=response_url,
                    cancel_url=cancel_url,
                    submitted_at=attempt.get("sent_at") or utcnow(),
                    error=None,
                    finished_at=None,
                )
            )
            self._set_job(
                conn,
                job,
                JobState.SUBMITTED,
                f"adopted request {request_id} ({how})",
                attempt_id=attempt["id"],
                next_attempt_at=None,
            )
            self._event(conn, "attempt.adopted", job=job, attempt_id=attempt["id"], request_id=request_id, how=how)

        return self._settle_uncertain("adopting a request", job, attempt, change)

    def settle_unsent(
        self,
        job: dict[str, Any],
        attempt: dict[str, Any],
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
                attempt_id=attempt["id"],
                next_attempt_at=None,
                billed_micro_usd=self._job_billed(conn, job["id"]),
                retry_base=job["attempt_count"],
            )

        return self._settle_uncertain("settling an uncertain submit", job, attempt, change)

    def cancel_uncertain(
        self, job: dict[str, Any], attempt: dict[str, Any], reason: str, request_id: str | None = None
    ) -> bool:
        """An uncertain job that fal never ran (cancelled while queued, or never created): cancelled, $0."""

        def change(conn: Connection) -> None:
            extra: dict[str, Any] = {"request_id": request_id} if request_id else {}
            self._end_attempt(conn, attempt, AttemptState.CANCELLED, reason, billed=0, **extra)
            self._set_job(conn, job, JobState.CANCELLED, reason, attempt_id=attempt["id"])

        return self._settle_uncertain("cancelling an uncertain job", job, attempt, change)

    def pending_bills(self, batches: Sequence[str] | None) -> list[dict[str, Any]]:
        """Attempts whose bill waits on fal's billing events: recorded as $0 pending fal's word (a
        refused run fal may have billed), or provisional (our price table's figure)."""

        def go(conn: Connection) -> list[dict[str, Any]]:
            return [
                dict(r)
                for r in conn.execute(
                    select(A, J.c.endpoint)
                    .select_from(A.join(J, J.c.id == A.c.job_id))
                    .where(
                        or_(A.c.price_source == PENDING_BILLING_EVENTS, A.c.price_source.startswith(PROVISIONAL)),
                        A.c.request_id.is_not(None),
                        *self._scope(batches),
                    )
                    .order_by(A.c.id)
                ).mappings()
            ]

        return self._read("reading pending bills", go)

    def settle_bill(self, attempt: dict[str, Any], billed_micro_usd: int, units: str | None, source: str) -> None:
        """Record what fal's billing events say an attempt cost (it was recorded as $0, pending)."""

        def go(conn: Connection) -> None:
            moved = conn.execute(
                update(A)
                .where(A.c.id == attempt["id"], A.c.price_source == attempt["price_source"])
                .values(billed_micro_usd=billed_micro_usd, billable_units=units, price_source=source)
            ).rowcount
            if moved != 1:  # settled meanwhile by another process: nothing to do
                return
            conn.execute(
                update(J)
                .where(J.c.id == attempt["job_id"])
                .values(billed_micro_usd=self._job_billed(conn, attempt["job_id"]))
            )
            if attempt.get("run_id") is not None:  # the run's committed figure follows fal's
                conn.execute(
                    update(R)
                    .where(R.c.id == attempt["run_id"])
                    .values(
                        reserved_micro_usd=R.c.reserved_micro_usd
                        + billed_micro_usd
                        - (attempt["billed_micro_usd"] or 0)
                    )
                )
            self._event(
                conn,
                "attempt.bill_settled",
                job={"id": attempt["job_id"], "batch_id": attempt["batch_id"]},
                attempt_id=attempt["id"],
                billed_micro_usd=billed_micro_usd,
                source=source,
            )

        self._tx("settling a bill", go)
