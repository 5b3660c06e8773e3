"""The commands' face of the database: enqueueing, the probe cache, counts, finding jobs, their
history, retry and cancel, and settling with fal's records (`settler`). Workers use `JobQueue`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, insert, literal, select, update
from sqlalchemy.engine import Connection

from ..domain import FOLLOW_STATES, Actor, AttemptState, JobSpec, JobState, ProbeResult, ceil_decimal
from ..records import AttemptRecord, EventRecord, JobOutline, JobRecord
from .models import Attempt, Batch, Event, Job, Probe, table, utcnow
from .plumbing import event_row, insert_events, pid_namespace, upsert
from .settle import Settler
from .transition import Claim, ClaimKind, Transitions

J, A = table(Job), table(Attempt)
CANCEL_LEASE_S = 60.0  # how long `cancel` holds the in-flight jobs it is cancelling at fal

_CHUNK = 500  # rows per IN (...) lookup, well under SQLite's variable limit


def fingerprint_key(fp: str) -> str:
    return hashlib.sha256(fp.encode()).hexdigest()


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass(frozen=True)
class EnqueueResult:
    batch: str
    added: int
    existing: int


@dataclass(frozen=True)
class StateCount:
    batch: str
    state: str
    jobs: int
    estimated_micro_usd: int


class Repository(Transitions):
    """The database operations the commands need; driver errors are translated in `plumbing`."""

    def __init__(self, engine: Engine, actor: Actor | None = None) -> None:
        super().__init__(engine, actor or Actor.current(), CANCEL_LEASE_S, pid_namespace=pid_namespace())
        self.settler = Settler(engine, self.actor, CANCEL_LEASE_S, pid_namespace=pid_namespace())

    # ----------------------------------------------------------------------- probes

    def cached_probes(self, fingerprints: Iterable[str]) -> dict[str, ProbeResult]:
        """Cached probe results by fingerprint."""
        keys = {fingerprint_key(fp): fp for fp in fingerprints}

        def go(conn: Connection) -> dict[str, ProbeResult]:
            found: dict[str, ProbeResult] = {}
            for chunk in _chunks(list(keys)):
                for row in conn.execute(select(Probe).where(Probe.fingerprint_sha256.in_(chunk))).mappings():
                    found[keys[row["fingerprint_sha256"]]] = _probe_from_row(row)
            return found

        return self._read("reading the probe cache", go)

    def store_probes(self, results: Iterable[ProbeResult]) -> None:
        rows = [_probe_row(r) for r in results]
        if rows:
            self._tx(
                "writing the probe cache",
                lambda conn: conn.execute(upsert(conn.dialect.name, Probe, ["fingerprint_sha256"]), rows),
            )

    # ----------------------------------------------------------------------- jobs

    def enqueue(
        self,
        batch: str,
        manifest_path: str | None,
        budget_micro_usd: int | None,
        jobs: Sequence[JobSpec],
        actor: Actor,
        *,
        daily_budget_micro_usd: int | None = None,
        warn_at_micro_usd: int | None = None,
    ) -> EnqueueResult:
        """Insert the jobs that are not in the table yet, all in one transaction.

        A job's key is unique across the table, so enqueueing twice adds nothing and a
        concurrent enqueue of the same manifest cannot create duplicates.
        """
        now = utcnow()

        def go(conn: Connection) -> EnqueueResult:
            batch_id = self._batch_id(
                conn, batch, manifest_path, budget_micro_usd, now, daily_budget_micro_usd, warn_at_micro_usd
            )
            stmt = upsert(conn.dialect.name, Job, ["key"]).returning(Job.id)
            # A chunk of rows at a time (100,000 jobs: memory); each chunk's enqueued events are
            # made from the ids it inserted, in SQL
            enqueued = _EnqueuedEvents(event_row(actor, "job.enqueued", at=now, to_state=JobState.QUEUED.value))
            added = 0
            for chunk in _chunks(jobs):
                ids = list(conn.execute(stmt, [_job_row(j, batch_id, now) for j in chunk]).scalars())
                if ids:
                    conn.execute(enqueued.where(J.c.id.in_(ids)))
                added += len(ids)
            counts = {"manifest": manifest_path, "added": added, "existing": len(jobs) - added}
            insert_events(conn, [event_row(actor, "batch.enqueued", at=now, batch_id=batch_id, details=counts)])
            return EnqueueResult(batch, added, len(jobs) - added)

        return self._tx("enqueueing", go)

    def _batch_id(
        self,
        conn: Connection,
        name: str,
        manifest_path: str | None,
        budget: int | None,
        now: Any,
        daily: int | None,
        warn_at: int | None,
    ) -> int:
        conn.execute(
            upsert(conn.dialect.name, Batch, ["name"]),
            [
                {
                    "name": name,
                    "manifest_path": manifest_path,
                    "budget_micro_usd": budget,
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        batch_id: int = conn.execute(select(Batch.id).where(Batch.name == name)).scalar_one()
        conn.execute(
            table(Batch)
            .update()
            .where(Batch.id == batch_id)
            .values(
                manifest_path=manifest_path,
                budget_micro_usd=budget,
                daily_budget_micro_usd=daily,
                warn_at_micro_usd=warn_at,
                updated_at=now,
            )
        )
        return batch_id

    # ----------------------------------------------------------------------- counts and batches

    def state_counts(self, batch: str | None = None) -> list[StateCount]:
        """Jobs and estimated cost per batch and state."""
        stmt = (
            select(Batch.name, Job.state, func.count(Job.id), func.coalesce(func.sum(Job.estimate_micro_usd), 0))
            .join(Batch, Batch.id == Job.batch_id)
            .group_by(Batch.name, Job.state)
            .order_by(Batch.name, Job.state)
        )
        if batch is not None:
            stmt = stmt.where(Batch.name == batch)
        return self._read(
            "counting jobs", lambda conn: [StateCount(b, s, int(n), int(c)) for b, s, n, c in conn.execute(stmt)]
        )

    def batch_jobs(self, batch: str) -> list[JobOutline]:
        """Every job of a batch: key, output path, state, estimate (for `plan --diff`)."""
        stmt = (
            select(Job.key, Job.output_path, Job.state, Job.estimate_micro_usd, Job.source)
            .join(Batch, Batch.id == Job.batch_id)
            .where(Batch.name == batch)
            .order_by(Job.id)
        )
        return self._read(
            "reading the batch",
            lambda conn: [JobOutline(k, o, JobState(s), e, src) for k, o, s, e, src in conn.execute(stmt)],
        )

    def batch_budgets(self, name: str) -> tuple[int | None, int | None, int | None]:
        """The batch's budget policies: per run, per rolling day, warning threshold."""
        stmt = select(Batch.budget_micro_usd, Batch.daily_budget_micro_usd, Batch.warn_at_micro_usd).where(
            Batch.name == name
        )
        row = self._read("reading the batch", lambda conn: conn.execute(stmt).first())
        return (row[0], row[1], row[2]) if row else (None, None, None)

    def batch_names(self) -> list[str]:
        stmt = select(Batch.name).order_by(Batch.name)
        return self._read("listing batches", lambda conn: list(conn.execute(stmt).scalars()))

    # ----------------------------------------------------------------------- find, history, retry, cancel

    def jobs_in(self, batches: Sequence[str] | None, states: Iterable[JobState]) -> list[JobRecord]:
        def go(conn: Connection) -> list[JobRecord]:
            return [
                JobRecord.from_row(r)
                for r in conn.execute(
                    select(J).where(J.c.state.in_([s.value for s in states]), *self._scope(batches)).order_by(J.c.id)
                ).mappings()
            ]

        return self._read("listing jobs", go)

    def find_jobs(self, refs: Sequence[str]) -> list[JobRecord]:
        """Jobs by id or key prefix (at least 6 characters)."""

        def go(conn: Connection) -> list[JobRecord]:
            out: list[JobRecord] = []
            for ref in refs:
                cond = J.c.id == int(ref) if ref.isdigit() else J.c.key.like(f"{ref}%")
                rows = conn.execute(select(J).where(cond)).mappings().all()
                out.extend(JobRecord.from_row(r) for r in rows)
            return out

        return self._read("finding jobs", go)

    def history(self, job_id: int) -> tuple[list[AttemptRecord], list[EventRecord]]:
        def go(conn: Connection) -> tuple[list[AttemptRecord], list[EventRecord]]:
            attempts = [
                AttemptRecord.from_row(r)
                for r in conn.execute(select(A).where(A.c.job_id == job_id).order_by(A.c.number)).mappings()
            ]
            events = [
                EventRecord.from_row(r)
                for r in conn.execute(select(table(Event)).where(Event.job_id == job_id).order_by(Event.id)).mappings()
            ]
            return attempts, events

        return self._read("reading a job's history", go)

    def retry_plan(self, job_ids: Sequence[int], from_states: Iterable[JobState]) -> list[tuple[JobRecord, str]]:
        """What `retry` would do with each job: "redeliver" (fal's paid output is fetched again,
        free) or "resubmit" (a new attempt, which fal bills again if it succeeds)."""
        allowed = [s.value for s in from_states]

        def go(conn: Connection) -> list[tuple[JobRecord, str]]:
            out = []
            for row in conn.execute(
                select(J).where(J.c.id.in_(list(job_ids)), J.c.state.in_(allowed)).order_by(J.c.id)
            ).mappings():
                job = JobRecord.from_row(row)
                last = self._latest_attempt(conn, job.id) if job.attempt_count else None
                again = (
                    last is not None
                    and last.output_url
                    and last.billed_micro_usd is not None
                    and last.state == AttemptState.FAILED
                    and job.state == JobState.FAILED
                )
                out.append((job, "redeliver" if again else "resubmit"))
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
                    last = self._latest_attempt(conn, job.id)
                    conn.execute(update(A).where(A.c.id == last.id).values(state=AttemptState.DOWNLOADING.value))
                    self._set_job(
                        conn,
                        job,
                        JobState.DOWNLOADING,
                        f"{reason}: fetching the paid output again",
                        attempt_id=last.id,
                        next_attempt_at=None,
                    )
                else:
                    self._set_job(
                        conn, job, JobState.QUEUED, reason, next_attempt_at=None, retry_base=job.attempt_count
                    )
            return len(plan)

        return self._tx("requeueing jobs", go)

    def cancel_queued(self, job_ids: Sequence[int], reason: str) -> int:
        def go(conn: Connection) -> int:
            n = 0
            for job in conn.execute(
                select(J).where(J.c.id.in_(list(job_ids)), J.c.state == JobState.QUEUED.value)
            ).mappings():
                self._set_job(conn, JobRecord.from_row(job), JobState.CANCELLED, reason)
                n += 1
            return n

        return self._tx("cancelling jobs", go)

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
            for job in map(JobRecord.from_row, rows):
                attempt = self._latest_attempt(conn, job.id)
                if attempt.cancel_url:
                    self._lease(conn, job.id, now)
                    out.append(Claim(ClaimKind.FOLLOW, job, attempt))
            return out

        return self._tx("taking jobs to cancel", go)


class _EnqueuedEvents:
    """INSERT INTO events … SELECT: one `job.enqueued` event per job picked by `where`, the
    event's other columns as in `row` (an `event_row`), the job and batch ids from the job."""

    def __init__(self, row: dict[str, Any]) -> None:
        events = table(Event)
        self.columns = [c for c in row if c not in ("batch_id", "job_id")] + ["batch_id", "job_id"]
        values = [literal(row[c], events.c[c].type) for c in self.columns[:-2]]
        self.select = select(*values, J.c.batch_id, J.c.id)

    def where(self, *cond: Any) -> Any:
        return insert(Event).from_select(self.columns, self.select.where(*cond).order_by(J.c.id))


def _job_row(j: JobSpec, batch_id: int, now: Any) -> dict[str, Any]:
    est = j.estimate
    assert est is not None, "jobs are priced before they are enqueued"
    return {
        "key": j.key,
        "batch_id": batch_id,
        "endpoint": j.endpoint,
        "source": j.source,
        "source_fingerprint": j.fingerprint or None,
        "media_field": j.media_field,
        "input_json": json.dumps(j.params, sort_keys=True, separators=(",", ":")),
        "output_path": j.output,
        "output_root": j.output_root or None,
        "project": j.project,
        "state": JobState.QUEUED.value,
        "estimate_micro_usd": est.micro_usd,
        "billable_units": str(est.billable_units),
        "unit": est.unit,
        "price_table": est.price_table,
        "price_verified": est.verified,
        "tags_json": json.dumps(list(j.tags)),
        "origin": j.origin,
        "attempt_count": 0,
        "created_at": now,
        "updated_at": now,
    }


def _probe_row(r: ProbeResult) -> dict[str, Any]:
    return {
        "fingerprint_sha256": fingerprint_key(r.fingerprint),
        "fingerprint": r.fingerprint,
        "source": r.source,
        "kind": r.kind,
        "duration_us": int(ceil_decimal(r.duration * 1_000_000)) if r.duration is not None else None,
        "width": r.width,
        "height": r.height,
        "fps": r.fps,
        "codec": r.codec,
        "rotation": r.rotation,
        "has_audio": r.has_audio,
        "size_bytes": r.size_bytes,
        "probed_at": utcnow(),
    }


def _probe_from_row(row: Any) -> ProbeResult:
    us = row["duration_us"]
    return ProbeResult(
        source=row["source"],
        fingerprint=row["fingerprint"],
        kind=row["kind"],
        duration=(Decimal(us) / 1_000_000).normalize() if us is not None else None,
        width=row["width"],
        height=row["height"],
        fps=row["fps"],
        codec=row["codec"],
        rotation=row["rotation"],
        has_audio=bool(row["has_audio"]),
        size_bytes=row["size_bytes"],
    )
