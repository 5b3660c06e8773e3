"""All SQL of batch_runner: the probe cache, enqueueing, counting; one place for writes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from ..domain import Actor, JobSpec, JobState, ProbeResult, ceil_decimal
from ..errors import DatabaseError
from .engine import safe_url, write_lock
from .models import Batch, Event, Job, Probe, table, utcnow

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


class Repository:
    """The database operations the use cases need; translates driver errors at this boundary."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _fail(self, action: str, exc: SQLAlchemyError) -> DatabaseError:
        orig = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return DatabaseError(
            f"{action} failed on {safe_url(str(self.engine.url))}: {orig[0] if orig else type(exc).__name__}",
            hint="nothing was written; check the database and retry",
        )

    # ----------------------------------------------------------------------- probes

    def cached_probes(self, fingerprints: Iterable[str]) -> dict[str, ProbeResult]:
        """Cached probe results by fingerprint."""
        keys = {fingerprint_key(fp): fp for fp in fingerprints}
        found: dict[str, ProbeResult] = {}
        try:
            with self.engine.connect() as conn:
                for chunk in _chunks(list(keys)):
                    rows = conn.execute(select(Probe).where(Probe.fingerprint_sha256.in_(chunk)))
                    for row in rows.mappings():
                        fp = keys[row["fingerprint_sha256"]]
                        found[fp] = _probe_from_row(row)
        except SQLAlchemyError as exc:
            raise self._fail("reading the probe cache", exc) from exc
        return found

    def store_probes(self, results: Iterable[ProbeResult]) -> None:
        rows = [_probe_row(r) for r in results]
        if not rows:
            return
        try:
            with write_lock(self.engine), self.engine.begin() as conn:
                conn.execute(_insert_ignore(self.engine, Probe, ["fingerprint_sha256"]), rows)
        except SQLAlchemyError as exc:
            raise self._fail("writing the probe cache", exc) from exc

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
        try:
            with write_lock(self.engine), self.engine.begin() as conn:
                batch_id = self._batch_id(
                    conn, batch, manifest_path, budget_micro_usd, now, daily_budget_micro_usd, warn_at_micro_usd
                )
                rows = [_job_row(j, batch_id, now) for j in jobs]
                inserted: list[tuple[int, str]] = []
                stmt = _insert_ignore(self.engine, Job, ["key"]).returning(Job.id, Job.key)
                for chunk in _chunks(rows):
                    inserted.extend(conn.execute(stmt, list(chunk)).all())
                events = [
                    _event(actor, now, "job.enqueued", batch_id=batch_id, job_id=job_id, to_state=JobState.QUEUED.value)
                    for job_id, _ in inserted
                ]
                if events:
                    conn.execute(insert(Event), events)
                conn.execute(
                    insert(Event),
                    [
                        _event(
                            actor,
                            now,
                            "batch.enqueued",
                            batch_id=batch_id,
                            details={
                                "manifest": manifest_path,
                                "added": len(inserted),
                                "existing": len(rows) - len(inserted),
                            },
                        )
                    ],
                )
        except SQLAlchemyError as exc:
            raise self._fail("enqueueing", exc) from exc
        return EnqueueResult(batch, len(inserted), len(rows) - len(inserted))

    def _batch_id(
        self,
        conn: Any,
        name: str,
        manifest_path: str | None,
        budget: int | None,
        now: Any,
        daily: int | None,
        warn_at: int | None,
    ) -> int:
        conn.execute(
            _insert_ignore(self.engine, Batch, ["name"]),
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
        try:
            with self.engine.connect() as conn:
                return [StateCount(b, s, int(n), int(c)) for b, s, n, c in conn.execute(stmt)]
        except SQLAlchemyError as exc:
            raise self._fail("counting jobs", exc) from exc

    def batch_jobs(self, batch: str) -> list[dict[str, Any]]:
        """Every job of a batch: key, output path, state, estimate (for `plan --diff`)."""
        stmt = (
            select(Job.key, Job.output_path, Job.state, Job.estimate_micro_usd, Job.source)
            .join(Batch, Batch.id == Job.batch_id)
            .where(Batch.name == batch)
            .order_by(Job.id)
        )
        try:
            with self.engine.connect() as conn:
                return [dict(r) for r in conn.execute(stmt).mappings()]
        except SQLAlchemyError as exc:
            raise self._fail("reading the batch", exc) from exc

    def batch_budgets(self, name: str) -> tuple[int | None, int | None, int | None]:
        """The batch's budget policies: per run, per rolling day, warning threshold."""
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(Batch.budget_micro_usd, Batch.daily_budget_micro_usd, Batch.warn_at_micro_usd).where(
                        Batch.name == name
                    )
                ).first()
        except SQLAlchemyError as exc:
            raise self._fail("reading the batch", exc) from exc
        return (row[0], row[1], row[2]) if row else (None, None, None)

    def batch_names(self) -> list[str]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(select(Batch.name).order_by(Batch.name)).scalars())
        except SQLAlchemyError as exc:
            raise self._fail("listing batches", exc) from exc


def _insert_ignore(engine: Engine, model: Any, conflict_cols: list[str]) -> Any:
    """INSERT … ON CONFLICT DO NOTHING on either backend."""
    make = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    return make(model).on_conflict_do_nothing(index_elements=conflict_cols)


def _event(
    actor: Actor,
    now: Any,
    kind: str,
    *,
    batch_id: int | None = None,
    job_id: int | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "at": now,
        "batch_id": batch_id,
        "job_id": job_id,
        "attempt_id": None,
        "host": actor.host,
        "pid": actor.pid,
        "user": actor.user,
        "kind": kind,
        "from_state": from_state,
        "to_state": to_state,
        "details_json": json.dumps(details or {}, sort_keys=True),
    }


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
