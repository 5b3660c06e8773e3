"""Dispatch under one lock: runs and their budget reservations, claims, and the sweep of what dead
workers left half-sent.

Every claim takes the `dispatch` lock row first, so the in-flight cap and the budget rules
(`budget.py`) are decided one claim at a time across threads, processes and machines; on
PostgreSQL the job rows are then picked with `FOR UPDATE SKIP LOCKED`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from .. import budget
from ..budget import BudgetStop
from ..domain import FOLLOW_STATES, IN_FLIGHT_STATES, Actor, AttemptState, JobState
from ..records import AttemptRecord, JobRecord, RunRecord
from .models import Attempt, Batch, Event, Job, Run, table, utcnow
from .plumbing import IN_BATCHES, owner_pid
from .transition import JOB_BY_ID, Claim, ClaimKind, Transitions


def _pair(build: Callable[..., Any]) -> tuple[Any, Any]:
    return build(), build(IN_BATCHES)


J, A, R, E = table(Job), table(Attempt), table(Run), table(Event)
DAY = timedelta(hours=24)

# A claim's statements, built once (see transition.py); each job query comes as a pair, for every
# batch and for the batches named in b_batches (Plumbing._scoped picks one).
_NOW = bindparam("b_now", type_=J.c.lease_expires_at.type)
_EST = bindparam("b_est", type_=BigInteger())
_FREE = or_(J.c.lease_owner.is_(None), J.c.lease_expires_at < _NOW)
_DUE = or_(J.c.next_attempt_at.is_(None), J.c.next_attempt_at <= _NOW)
_STALE_SUBMITS = _pair(
    lambda *scope: select(J).where(J.c.state == JobState.SUBMITTING.value, J.c.lease_expires_at < _NOW, *scope)
)
_NEXT_FOLLOW = _pair(
    lambda *scope: (
        select(J)
        .where(J.c.state.in_([s.value for s in FOLLOW_STATES]), _FREE, _DUE, *scope)
        .order_by(J.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
)
_NEXT_QUEUED = _pair(
    lambda *scope: (
        select(J)
        .where(J.c.state == JobState.QUEUED.value, _DUE, *scope)
        .order_by(J.c.id)
        .limit(bindparam("b_room"))
        .with_for_update(skip_locked=True)
    )
)
_IN_FLIGHT = select(func.count()).select_from(J).where(J.c.state.in_([s.value for s in IN_FLIGHT_STATES]))
_RUN = select(R).where(R.c.id == bindparam("b_run_id"))
# The reservation repeats the run rule as its WHERE: a bill settled since the read (outside the
# dispatch lock) may have raised what the run has committed.
_RESERVE = (
    update(R)
    .where(
        R.c.id == bindparam("b_run_id"),
        or_(R.c.budget_micro_usd.is_(None), R.c.reserved_micro_usd + _EST <= R.c.budget_micro_usd),
    )
    .values(reserved_micro_usd=R.c.reserved_micro_usd + _EST)
)
_INSERT_ATTEMPT = insert(A).returning(*A.c)  # the new attempt's row, with its id, in the same round trip


@dataclass(frozen=True)
class Claims:
    """What one claiming transaction took: the claims, in claim order, and the budget stop that
    ended it early (if one did)."""

    claims: list[Claim]
    stop: BudgetStop | None = None


class Dispatch(Transitions):
    """Runs, claims and the stale-submit sweep: everything that takes the dispatch lock."""

    def __init__(self, engine: Engine, actor: Actor, lease_s: float, *, pid_namespace: str | None = None) -> None:
        super().__init__(engine, actor, lease_s, pid_namespace=pid_namespace)
        self._sweep_lock = threading.Lock()
        self._next_sweep: datetime | None = None  # when a claim next sweeps stale submits (see _sweep_due)

    # ------------------------------------------------------------------ runs

    def start_run(
        self,
        name: str,
        batch: str | None,
        budget_micro_usd: int | None,
        daily_budget_micro_usd: int | None = None,
        warn_at_micro_usd: int | None = None,
    ) -> RunRecord:
        """Create the named run, or join it (budgets given later replace earlier ones)."""
        policies: dict[str, Any] = {
            "budget_micro_usd": budget_micro_usd,
            "daily_budget_micro_usd": daily_budget_micro_usd,
            "warn_at_micro_usd": warn_at_micro_usd,
        }

        def go(conn: Connection) -> RunRecord:
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
            # `worker` names this process (host[@pidns]:pid:nonce), so `close_dead_runs` knows who holds the run
            self._event(conn, "run.started", batch_id=batch_id, run=name, worker=self.worker, **policies)
            return self._run_info(conn, name)

        return self._tx("starting the run", go)

    def _run_info(self, conn: Connection, name: str) -> RunRecord:
        return RunRecord.from_row(conn.execute(select(R).where(R.c.name == name)).mappings().one())

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

    def close_dead_runs(self, alive: Callable[[int], bool], current_run_id: int) -> list[str]:
        """Close as `interrupted` (with finished_at) every run still `running` that no live worker
        holds, and return their names. A killed worker never finishes its run itself.

        Who holds a run: every process that started or joined it (`work --run NAME`), named in its
        `run.started` events. One of them is known dead when it ran where this process sees its
        pid (same host and pid namespace) and that pid is gone (or is ours: a restarted container),
        or, anywhere, when every job lease it still holds has expired (its heartbeat stopped). A
        worker on another machine that holds no lease cannot be told from an idle live one, so it
        keeps the run open: the next run on its machine closes it. The run being started now
        (`current_run_id`) is held by this process and is never closed here."""

        def go(conn: Connection) -> list[str]:
            now = self._serialize(conn)  # a worker joining one of these runs waits for the verdict, or comes first
            runs = conn.execute(select(R).where(R.c.status == "running", R.c.id != current_run_id)).mappings().all()
            if not runs:
                return []
            holders = self._run_holders(conn, min(r["started_at"] for r in runs))
            closed = []
            for run in runs:
                workers = holders.get(run["name"])
                if workers and not any(self._worker_alive(conn, w, alive, now) for w in workers):
                    conn.execute(update(R).where(R.c.id == run["id"]).values(status="interrupted", finished_at=now))
                    self._event(conn, "run.interrupted", run=run["name"], dead=sorted(workers))
                    closed.append(run["name"])
            return closed

        return self._tx("closing dead workers' runs", go)

    @staticmethod
    def _run_holders(conn: Connection, since: datetime) -> dict[str, set[str]]:
        """Run name → the workers that started or joined it since `since` (runs from before
        workers were recorded have none: they are left as they are)."""
        rows = conn.execute(select(E.c.details_json).where(E.c.kind == "run.started", E.c.at >= since)).scalars()
        holders: dict[str, set[str]] = {}
        for raw in rows:
            details = json.loads(raw or "{}")
            if details.get("worker") and details.get("run"):
                holders.setdefault(details["run"], set()).add(details["worker"])
        return holders

    def _worker_alive(self, conn: Connection, worker: str, alive: Callable[[int], bool], now: datetime) -> bool:
        pid = owner_pid(worker, self.local)
        if pid is not None:
            return pid != self.actor.pid and alive(pid)
        leases = conn.execute(select(J.c.lease_expires_at).where(J.c.lease_owner == worker)).scalars().all()
        return not leases or any(end is not None and end > now for end in leases)

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
        submit (if the in-flight cap and the budgets allow). None when there is nothing."""
        got = self.claim_many(run_id, batches, max_in_flight, 1, follow_only, account_daily_micro_usd)
        return got.claims[0] if got.claims else got.stop

    def claim_many(
        self,
        run_id: int,
        batches: Sequence[str] | None,
        max_in_flight: int,
        want: int,
        follow_only: bool = False,
        account_daily_micro_usd: int | None = None,
    ) -> Claims:
        """Up to `want` jobs in one transaction under the dispatch lock: live requests to follow
        first, then queued jobs to submit while the in-flight cap allows. Each submit claim is
        decided and reserved exactly as a single claim would be (the run re-read after each
        reservation), so a crash leaves each one resumable as a lone claim; the first budget stop
        ends the list and comes back with the claims made before it."""

        def go(conn: Connection) -> Claims:
            now = self._serialize(conn)
            if self._sweep_due(now):
                self._sweep_stale_submits(conn, now, batches, run_id)
            claims = self._claim_follows(conn, now, batches, run_id, max(1, want))
            if claims or follow_only:
                return Claims(claims)
            in_flight = conn.execute(_IN_FLIGHT).scalar_one()
            room = min(max(1, want), max_in_flight - in_flight)
            if room <= 0:
                return Claims([])
            rows = conn.execute(*self._scoped(_NEXT_QUEUED, batches, {"b_now": now, "b_room": room})).mappings()
            for queued in [JobRecord.from_row(r) for r in rows]:
                run = RunRecord.from_row(conn.execute(_RUN, {"b_run_id": run_id}).mappings().one())
                stop = self._budget_stop(conn, now, queued, run, account_daily_micro_usd)
                if stop is not None:
                    return Claims(claims, stop)
                warning = self._warn(conn, queued, run)
                claims.append(self._submit(conn, now, queued, run_id, warning))
            return Claims(claims)

        return self._tx("claiming jobs" if want > 1 else "claiming a job", go)

    def _claim_follows(
        self, conn: Connection, now: datetime, batches: Sequence[str] | None, run_id: int, want: int
    ) -> list[Claim]:
        """Live requests whose lease is free and whose next look is due (up to `want`), leased
        to this worker."""
        claims: list[Claim] = []
        while len(claims) < want and (followed := self._claim_follow(conn, now, batches, run_id)) is not None:
            claims.append(followed)
        return claims

    def _claim_follow(
        self, conn: Connection, now: datetime, batches: Sequence[str] | None, run_id: int
    ) -> Claim | None:
        """A live request whose lease is free and whose next look is due, leased to this worker."""
        follow = conn.execute(*self._scoped(_NEXT_FOLLOW, batches, {"b_now": now})).mappings().first()
        if follow is None:
            return None
        job = JobRecord.from_row(follow)
        attempt = self._latest_attempt(conn, job.id)
        self._lease(conn, job.id, now)
        self._event(
            conn, "job.followed", job=job, attempt_id=attempt.id, request_id=attempt.request_id, worker=self.worker
        )
        return Claim(ClaimKind.FOLLOW, job, attempt, run_id=run_id)

    def _budget_stop(
        self, conn: Connection, now: datetime, job: JobRecord, run: RunRecord, account_daily: int | None
    ) -> BudgetStop | None:
        """Ask the budget rules about the next job, with the numbers read under the dispatch lock;
        when every rule lets it through, reserve its estimate on the run."""
        est = job.estimate_micro_usd
        for limit, scope_batch, scope in (
            (run.daily_budget_micro_usd, job.batch_id, budget.BudgetScope.BATCH_PER_DAY),
            (account_daily, None, budget.BudgetScope.ACCOUNT_PER_DAY),
        ):
            if limit is not None:  # the 24 h sums are read only for a budget that exists
                stop = budget.daily_stop(job.id, est, limit, self.spent_since(conn, now - DAY, scope_batch), scope)
                if stop is not None:
                    return stop
        stop = budget.run_stop(job.id, est, run.reserved_micro_usd, run.budget_micro_usd)
        if stop is not None:
            return stop
        reserved = conn.execute(_RESERVE, {"b_run_id": run.id, "b_est": est})
        if reserved.rowcount != 1:
            limit = run.budget_micro_usd or 0
            return BudgetStop(job.id, est, limit - run.reserved_micro_usd, limit, budget.BudgetScope.RUN)
        return None

    def _warn(self, conn: Connection, job: JobRecord, run: RunRecord) -> str | None:
        """The warning, once per run, for the claim that crosses the run's warning threshold."""
        committed = run.reserved_micro_usd + job.estimate_micro_usd
        warn_at = run.warn_at_micro_usd
        if warn_at is None or not budget.crosses_warning(committed, warn_at, bool(run.warned)):
            return None
        conn.execute(update(R).where(R.c.id == run.id).values(warned=True))  # once per run
        self._event(
            conn,
            "run.budget_warning",
            batch_id=job.batch_id,
            run=run.name,
            committed_micro_usd=committed,
            warn_at_micro_usd=warn_at,
        )
        return budget.warning_message(run.name, committed, warn_at)

    def _submit(self, conn: Connection, now: datetime, job: JobRecord, run_id: int, warning: str | None) -> Claim:
        """A new attempt for the job (its estimate reserved), leased to this worker to submit."""
        est = job.estimate_micro_usd
        number = job.attempt_count + 1
        lease_end = now + timedelta(seconds=self.lease_s)
        created = AttemptRecord.from_row(
            conn.execute(
                _INSERT_ATTEMPT,
                {
                    "job_id": job.id,
                    "number": number,
                    "run_id": run_id,
                    "batch_id": job.batch_id,
                    "worker": self.worker,
                    "state": AttemptState.PREPARING.value,
                    "reserved_micro_usd": est,
                    "created_at": now,
                },
            )
            .mappings()
            .one()
        )
        attempt_id = created.id
        JOB_BY_ID(
            conn,
            {
                "b_job_id": job.id,
                "state": JobState.SUBMITTING.value,
                "attempt_count": number,
                "lease_owner": self.worker,
                "lease_expires_at": lease_end,
                "updated_at": now,
                "next_attempt_at": None,
            },
        )
        self._event(
            conn,
            "job.claimed",
            job=job,
            attempt_id=attempt_id,
            from_state=job.state.value,
            to_state=JobState.SUBMITTING.value,
            attempt=number,
            reserved_micro_usd=est,
            worker=self.worker,
        )
        claimed = job.evolve(
            state=JobState.SUBMITTING,
            attempt_count=number,
            lease_owner=self.worker,
            lease_expires_at=lease_end,
            updated_at=now,
            next_attempt_at=None,
        )
        return Claim(ClaimKind.SUBMIT, claimed, created, warning, run_id)

    def sweep(self, batches: Sequence[str] | None, run_id: int | None) -> None:
        """Settle now what dead workers left half-sent (see `_sweep_stale_submits`), so a run can
        ask fal about them before it starts."""

        def go(conn: Connection) -> None:
            self._sweep_stale_submits(conn, self._serialize(conn), batches, run_id)

        self._tx("sweeping stale submits", go)

    def _sweep_due(self, now: datetime) -> bool:
        """A claim sweeps at most every quarter lease: a submit goes stale only when its lease has
        run out, so sweeping at every claim found nothing almost every time, at a query per claim."""
        with self._sweep_lock:
            if self._next_sweep is not None and now < self._next_sweep:
                return False
            self._next_sweep = now + timedelta(seconds=self.lease_s / 4)
            return True

    def _sweep_stale_submits(
        self, conn: Connection, now: datetime, batches: Sequence[str] | None, run_id: int | None = None
    ) -> None:
        """Jobs left in `submitting` by a dead worker: requeue what was never sent, and mark
        what may have been sent as uncertain (never resubmitted automatically)."""
        stale = conn.execute(*self._scoped(_STALE_SUBMITS, batches, {"b_now": now})).mappings()
        for job in [JobRecord.from_row(r) for r in stale]:
            attempt = self._latest_attempt(conn, job.id)
            if attempt.state == AttemptState.PREPARING.value:
                self._end_attempt(conn, attempt, AttemptState.UNSENT, "the worker stopped before sending", billed=0)
                self._set_job(
                    conn,
                    job,
                    JobState.QUEUED,
                    "worker stopped before sending; requeued",
                    attempt_id=attempt.id,
                )
            else:
                self._end_attempt(
                    conn, attempt, AttemptState.UNCERTAIN, "the worker stopped while sending the submit", billed=None
                )
                conn.execute(update(A).where(A.c.id == attempt.id).values(settled_run_id=run_id))
                self._set_job(
                    conn,
                    job,
                    JobState.UNCERTAIN,
                    "worker stopped while sending the submit",
                    attempt_id=attempt.id,
                )
